"""The Spark feature engines agree with a naive statement of the time semantics."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from common.compile import compile_usecase
from common.features.compute import feature_history, feature_latest
from common.features.prepare import prepare
from common.spec.usecase import UseCase
from tests.feature_reference import reference_value

SPEC = {
    "name": "wintest",
    "entities": {"customer": {"key": "customer_id"}},
    "sources": {
        "events": {
            "format": "json",
            "path": "{landing}/events",
            "entity": "customer",
            "id": "event_id",
            "event_time": "ts",
            "columns": {
                "event_id": {"type": "string", "required": True},
                "customer_id": {"type": "string", "required": True},
                "event_type": {"type": "string"},
                "ts": {"type": "timestamp", "required": True},
                "amount": {"type": "double"},
                "channel": {"type": "string"},
            },
        }
    },
    "feature_groups": {
        "act": {
            "entity": "customer",
            "source": "events",
            "slide": "1 hour",
            "transforms": [{"name": "amt", "fn": "clip", "input": "amount", "min": 0, "max": 100}],
            "features": [
                {"name": "calls_3h", "agg": "count", "where": "event_type = 'call'", "window": "3 hours"},
                {"name": "calls_1h", "agg": "count", "where": "event_type = 'call'", "window": "1 hour"},
                {"name": "pay_sum_2h", "agg": "sum", "expr": "amt", "where": "event_type = 'pay'", "window": "2 hours"},
                {"name": "pay_avg_3h", "agg": "avg", "expr": "amt", "where": "event_type = 'pay'", "window": "3 hours"},
                {"name": "amt_min_3h", "agg": "min", "expr": "amt", "window": "3 hours"},
                {"name": "amt_max_2h", "agg": "max", "expr": "amt", "window": "2 hours"},
                {"name": "amt_std_3h", "agg": "stddev", "expr": "amt", "window": "3 hours"},
                {"name": "channels_3h", "agg": "count_distinct", "expr": "channel", "window": "3 hours"},
                {"name": "last_amt_3h", "agg": "last", "expr": "amt", "window": "3 hours"},
            ],
        }
    },
}

FEATURES = {
    "calls_3h": ("count", None, lambda e: e["event_type"] == "call", 3),
    "calls_1h": ("count", None, lambda e: e["event_type"] == "call", 1),
    "pay_sum_2h": ("sum", "amt", lambda e: e["event_type"] == "pay", 2),
    "pay_avg_3h": ("avg", "amt", lambda e: e["event_type"] == "pay", 3),
    "amt_min_3h": ("min", "amt", lambda e: True, 3),
    "amt_max_2h": ("max", "amt", lambda e: True, 2),
    "amt_std_3h": ("stddev", "amt", lambda e: True, 3),
    "channels_3h": ("count_distinct", "channel", lambda e: True, 3),
    "last_amt_3h": ("last", "amt", lambda e: True, 3),
}


def _amt(e):
    return None if e["amount"] is None else min(max(e["amount"], 0.0), 100.0)


def _events():
    base = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    spec = [
        # (entity, minutes after base, type, amount, channel)
        ("a", 0, "call", None, "phone"),
        ("a", 5, "pay", 40.0, "web"),
        ("a", 59, "pay", 150.0, "web"),  # clipped to 100
        ("a", 60, "call", None, "chat"),  # exactly on a tile edge
        ("a", 60, "pay", 10.0, "app"),  # tie on time with the call
        ("a", 130, "pay", -5.0, "app"),  # clipped to 0
        ("a", 200, "call", None, None),
        ("a", 320, "pay", 20.0, "web"),  # after a gap: old tiles leave the window
        ("b", 15, "pay", 7.5, "store"),
        ("b", 16, "call", None, "phone"),
        ("b", 181, "pay", None, "web"),  # payment without amount
    ]
    out = []
    for i, (entity, minutes, kind, amount, channel) in enumerate(spec):
        out.append(
            {
                "event_id": f"e{i:02d}",
                "customer_id": entity,
                "event_type": kind,
                "ts": base + timedelta(minutes=minutes),
                "amount": amount,
                "channel": channel,
            }
        )
    return out


@pytest.fixture(scope="module")
def plan():
    return compile_usecase(UseCase.model_validate(SPEC)).group("act")


@pytest.fixture(scope="module")
def prepared(spark, plan):
    events = _events()
    # shuffle the arrival order: the engine must not depend on it
    rows = [events[i] for i in (5, 0, 9, 3, 1, 10, 2, 8, 4, 7, 6)]
    df = spark.createDataFrame(
        rows,
        "event_id string, customer_id string, event_type string, ts timestamp, amount double, channel string",
    )
    return prepare(plan, df)


def _expected(events, entity, t):
    enriched = [dict(e, amt=_amt(e)) for e in events]
    out = {}
    for name, (agg, column, where, hours) in FEATURES.items():
        out[name] = reference_value(
            enriched, entity, t, agg, (lambda e, c=column: 1 if c is None else e[c]), where, 3600, hours * 3600
        )
    return out


def _close(left, right) -> bool:
    if left is None or right is None:
        return left is None and right is None
    return math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-9)


def test_history_matches_the_reference_at_every_event_time(plan, prepared):
    events = _events()
    rows = feature_history(plan, prepared).collect()
    distinct_times = {(e["customer_id"], e["ts"]) for e in events}
    assert len(rows) == len(distinct_times), "one row per entity and distinct event time"
    for row in rows:
        t = row.feature_ts.replace(tzinfo=UTC) if row.feature_ts.tzinfo is None else row.feature_ts
        expected = _expected(events, row.customer_id, t)
        for name, value in expected.items():
            assert _close(row[name], value), f"{row.customer_id} at {t} {name}: {row[name]} != {value}"


def test_latest_equals_history_at_the_newest_event(plan, prepared):
    events = _events()
    latest = {r.customer_id: r for r in feature_latest(plan, prepared).collect()}
    assert set(latest) == {"a", "b"}
    for entity, row in latest.items():
        newest = max(e["ts"] for e in events if e["customer_id"] == entity)
        assert row.feature_ts.replace(tzinfo=UTC) == newest
        for name, value in _expected(events, entity, newest).items():
            assert _close(row[name], value), f"{entity} {name}: {row[name]} != {value}"


def test_window_edges(plan, prepared):
    """Spot checks written out by hand, so the reference itself is checked too."""
    by_time = {(r.customer_id, r.feature_ts.strftime("%H:%M")): r for r in feature_history(plan, prepared).collect()}
    at_11 = by_time[("a", "11:00")]
    assert at_11.calls_1h == 1.0  # only the 11:00 call: the 1 h window is the current tile
    assert at_11.calls_3h == 2.0  # 10:00 and 11:00
    assert at_11.pay_sum_2h == 150.0  # 40 + 100 (clipped) + 10
    at_1520 = by_time[("a", "15:20")]
    assert at_1520.calls_3h == 1.0  # window starts 13:00: the 13:20 call counts, 11:00 does not
    assert at_1520.channels_3h == 1.0  # only 'web' (the 13:20 call has no channel)


def _state_rows(plan, prepared):
    """The stream operator's input rows: (entity, µs, event id, each feature's row value)."""
    from common.compile.plan import EVENT_ID, TS_MICROS
    from common.features.windows import value_column, with_row_values

    columns = [value_column(a) for a in plan.aggregations]
    rows = with_row_values(plan, prepared).select("customer_id", TS_MICROS, EVENT_ID, *columns).collect()
    return [(r[0], r[1], r[2], [r[c] for c in columns]) for r in rows]


def _fold(plan, states, rows):
    from common.features.tile_state import TileFolder, TileState

    folder = TileFolder(plan.aggregations, plan.slide_s)
    for entity in {r[0] for r in rows}:
        mine = [r for r in rows if r[0] == entity]
        state = states.setdefault(entity, TileState())
        folder.fold(state, [(r[1], r[2], dict(enumerate(r[3]))) for r in mine])
    return folder


@pytest.mark.parametrize("batches", [1, 3, 11])
def test_tile_state_folded_in_any_batches_gives_the_reference_at_the_newest_event(plan, prepared, batches):
    """The stream's per-entity state (tiles folded batch by batch, any arrival order) equals the reference."""
    events = _events()
    rows = _state_rows(plan, prepared)  # arrival order as shuffled in the fixture
    states: dict = {}
    size = math.ceil(len(rows) / batches)
    for start in range(0, len(rows), size):
        folder = _fold(plan, states, rows[start : start + size])
    names = [a.name for a in plan.aggregations]
    for entity, state in states.items():
        newest = max(e["ts"] for e in events if e["customer_id"] == entity)
        assert state.newest_us == int(newest.timestamp() * 1_000_000)
        got = dict(zip(names, folder.values(state), strict=True))
        for name, value in _expected(events, entity, newest).items():
            assert _close(got[name], value), f"{entity} {name} after {batches} batches: {got[name]} != {value}"


def test_tile_state_keeps_only_the_longest_window_and_skips_older_events(plan, prepared):
    from common.features.tile_state import TileState

    rows = _state_rows(plan, prepared)
    states: dict = {}
    folder = _fold(plan, states, [r for r in rows if r[0] == "a"])
    state = states["a"]
    # a's newest event is at 15:20: the 3 h windows read the tiles from 13:00 on; older ones are gone
    assert sorted(state.tiles) == [start for start in sorted(state.tiles) if start >= folder.oldest_kept(state)]
    assert min(state.tiles) == folder.oldest_kept(state)
    before = folder.values(state)
    old = [r for r in rows if r[0] == "a"][:2]  # events of 10:00-12:10, older than the horizon
    assert folder.fold(state, [(r[1], r[2], dict(enumerate(r[3]))) for r in old]) == 0
    assert folder.values(state) == before
    assert TileState.from_json(json.loads(json.dumps(state.to_json()))) == state


def test_tile_state_folds_the_same_events_to_the_same_bits_whatever_their_order(plan):
    """A replayed micro-batch may deliver its rows in another order (a shuffle), and tiles may be created in
    another order: the values are the same to the last bit, as the kill test compares them exactly."""
    from common.features.tile_state import TileFolder, TileState

    folder = TileFolder(plan.aggregations, plan.slide_s)
    base = int(datetime(2026, 1, 14, 12, tzinfo=UTC).timestamp()) // plan.slide_s * plan.slide_s
    # one tile of three events, then three tiles of one event each; 0.1 + 0.2 + 0.3 depends on the order
    in_one_tile = [((base + i) * 1_000_000, f"e{i}", v) for i, v in enumerate((0.1, 0.2, 0.3))]
    per_tile = [((base + i * plan.slide_s) * 1_000_000, f"t{i}", v) for i, v in enumerate((0.1, 0.2, 0.3))]

    def values(batches):
        state = TileState()
        for batch in batches:
            folder.fold(state, [(ts, eid, dict.fromkeys(range(len(plan.aggregations)), v)) for ts, eid, v in batch])
        return folder.values(state)

    assert values([in_one_tile]) == values([list(reversed(in_one_tile))])
    assert values([[event] for event in per_tile]) == values([[event] for event in reversed(per_tile)])


@pytest.mark.parametrize("batches", [1, 4])
def test_tile_state_values_at_any_event_time_equal_the_reference(plan, prepared, batches):
    """The trigger operator values a firing at its event, which need not be the newest: the whole tiles before
    its tile, plus its tile's events up to and including it, whatever arrived after it (ties count)."""
    from common.features.tile_state import TileFolder, TileState

    events = _events()
    rows = _state_rows(plan, prepared)
    folder = TileFolder(plan.aggregations, plan.slide_s)
    names = [a.name for a in plan.aggregations]
    size = math.ceil(len(rows) / batches)
    states: dict = {}
    for start in range(0, len(rows), size):
        for entity in {r[0] for r in rows[start : start + size]}:
            mine = [(r[1], r[2], dict(enumerate(r[3]))) for r in rows[start : start + size] if r[0] == entity]
            # the operator's floor: nothing older is evicted while a firing may still be valued before it
            folder.fold(states.setdefault(entity, TileState()), mine, oldest=-(2**62))
    for entity, state in states.items():
        recent = [(r[1], r[2], dict(enumerate(r[3]))) for r in rows if r[0] == entity]
        for event in (e for e in events if e["customer_id"] == entity):
            got = dict(
                zip(names, folder.values_at(state, int(event["ts"].timestamp() * 1_000_000), recent), strict=True)
            )
            for name, value in _expected(events, entity, event["ts"]).items():
                assert _close(got[name], value), f"{entity} at {event['ts']} {name}: {got[name]} != {value}"
