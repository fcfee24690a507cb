"""Trigger semantics: the pure matcher, then the real stateful streaming operator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from common.compile.triggers import TriggerPlan
from common.triggers.matcher import Rule, TriggerState, advance

MIN = 60 * 1_000_000
SEQ = Rule("sequence", 2, 30 * MIN, 0)
ALL = Rule("all_of", 2, 30 * MIN, 0)
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
A, B = 0, 1


def run(rule: Rule, *batches: list[tuple[int, str, int]], watermark_lag: int = 10 * MIN) -> list[tuple[int, str]]:
    """Feed batches in order (the watermark trails the newest event seen); firings as (minutes, event id)."""
    state, out, newest = TriggerState(), [], 0
    for batch in batches:
        newest = max([newest] + [ts for ts, _, _ in batch])
        for firing in advance(rule, state, list(batch), newest - watermark_lag):
            out.append(((firing.time_us - T0) // MIN, firing.event_id))
    return out


def ev(minute: float, event_id: str, condition: int) -> tuple[int, str, int]:
    return (T0 + int(minute * MIN), event_id, condition)


def test_sequence_fires_for_a_then_b_within_the_window():
    assert run(SEQ, [ev(0, "a", A), ev(20, "b", B)]) == [(20, "b")]


def test_sequence_does_not_fire_for_b_then_a_but_all_of_does():
    assert run(SEQ, [ev(0, "b", B), ev(20, "a", A)]) == []
    assert run(ALL, [ev(0, "b", B), ev(20, "a", A)]) == [(20, "a")]


def test_no_firing_outside_the_window_and_the_edge_counts():
    assert run(SEQ, [ev(0, "a", A), ev(31, "b", B)]) == []
    assert run(SEQ, [ev(0, "a", A), ev(30, "b", B)]) == [(30, "b")]  # exactly `within` apart: fires


def test_equal_times_are_not_a_sequence():
    assert run(SEQ, [ev(5, "a", A), ev(5, "b", B)]) == []


def test_fires_once_per_cooldown():
    rule = Rule("sequence", 2, 30 * MIN, 60 * MIN)
    events = [ev(0, "a1", A), ev(5, "b1", B), ev(10, "b2", B), ev(50, "a2", A), ev(55, "b3", B), ev(70, "b4", B)]
    # b1 fires; b2 (5 min later) and b3 (50 min later) are inside the cooldown; b4 at 70 is 65 min after b1
    assert run(rule, events) == [(5, "b1"), (70, "b4")]


def test_out_of_order_within_the_watermark_still_fires_at_the_last_event():
    # the support call arrives first, the outage report that preceded it one batch later
    assert run(SEQ, [ev(20, "b", B)], [ev(12, "a", A)]) == [(20, "b")]


def test_cooldown_looks_both_ways_for_late_completions():
    rule = Rule("sequence", 2, 30 * MIN, 60 * MIN)
    # b at 40 fires first; a later-arriving, earlier combination (a0 -> b0 at 30) is within the cooldown
    assert run(rule, [ev(35, "a1", A), ev(40, "b1", B)], [ev(25, "a0", A), ev(30, "b0", B)]) == [(40, "b1")]


def test_duplicates_and_replays_never_fire_twice():
    batch = [ev(0, "a", A), ev(10, "b", B)]
    assert run(SEQ, batch, batch, [ev(10, "b", B)]) == [(10, "b")]


def test_any_of_and_a_single_event_meeting_two_conditions():
    rule = Rule("any_of", 2, 0, 0)
    assert run(rule, [ev(0, "x", A), ev(0, "x", B), ev(3, "y", B)]) == [(0, "x"), (3, "y")]


def test_state_is_bounded_by_the_watermark():
    state = TriggerState()
    for minute in range(0, 600, 5):
        advance(SEQ, state, [ev(minute, f"a{minute}", A)], T0 + minute * MIN - 10 * MIN)
    # only events that a future combination (after the watermark) can still use remain
    assert len(state.events) <= (30 + 10) // 5 + 1
    assert TriggerState.from_json(state.to_json()) == state


# --- the real operator: Delta stream -> transformWithState (RocksDB) -> foreachBatch ---------

TRIGGER = TriggerPlan(
    usecase="t",
    name="outage_then_call",
    kind="sequence",
    conditions=("event_type = 'outage_report'", "event_type = 'support_call'"),
    entity_key="customer_id",
    source="events",
    event_time="ts",
    id_column="event_id",
    within_s=1800,
    cooldown_s=3600,
    watermark_s=600,
    model="churn",
    alias="champion",
    threshold=0.5,
)
START = datetime(2026, 1, 1, tzinfo=UTC)


def _append(spark, path: str, rows: list[tuple[str, str, str, float]]) -> None:
    frame = spark.createDataFrame(
        [(eid, cid, kind, START + timedelta(minutes=m)) for eid, cid, kind, m in rows],
        "event_id string, customer_id string, event_type string, ts timestamp",
    )
    frame.write.format("delta").mode("append").save(path)


def _drain(spark, path: str, checkpoint: str, sink: list) -> None:
    from common.runtime.state_store import rocksdb_state_store
    from common.triggers.operator import firings

    stream = spark.readStream.format("delta").option("maxFilesPerTrigger", 1).load(path)
    writer = (
        firings(stream, [TRIGGER])
        .writeStream.option("checkpointLocation", checkpoint)
        .foreachBatch(lambda df, _: sink.extend(tuple(r) for r in df.collect()))
        .trigger(availableNow=True)
    )
    with rocksdb_state_store(spark):
        query = writer.start()
    query.awaitTermination()
    assert query.exception() is None


def test_operator_keeps_state_across_batches_and_restarts(spark, tmp_path):
    path, checkpoint, out = str(tmp_path / "events"), str(tmp_path / "cp"), []
    _append(spark, path, [("e1", "C1", "support_call", 20), ("e2", "C2", "outage_report", 0)])
    _append(spark, path, [("e3", "C1", "outage_report", 12), ("e4", "C2", "payment", 5)])
    _drain(spark, path, checkpoint, out)
    # restart from the checkpoint: state (C2's outage) survives
    _append(spark, path, [("e5", "C2", "support_call", 25), ("e6", "C3", "support_call", 1)])
    _append(spark, path, [("e7", "C2", "support_call", 40)])  # inside C2's cooldown
    _append(spark, path, [("e8", "C3", "outage_report", 0.5)])  # C3: call before outage -> no firing
    _drain(spark, path, checkpoint, out)
    fired = sorted((r[0], r[3], r[2].replace(tzinfo=UTC) if r[2].tzinfo is None else r[2]) for r in out)
    assert fired == [("C1", "e1", START + timedelta(minutes=20)), ("C2", "e5", START + timedelta(minutes=25))]


def test_firings_carry_their_features_from_the_operators_tiles(spark, tmp_path):
    """The operator that holds the triggers and the group's tiles values each firing at its event: the reference
    over the events that had arrived by the firing's batch, late ones included (a call too late for the triggers
    still counts: e8 reads e7), also for a late firing before newer events of its tile (e5: e3 does not count)."""
    import json

    from common.runtime.state_store import rocksdb_state_store
    from common.triggers.shared_state import FEATURES, firings_with_features
    from tests.test_feature_windows import _close, _expected

    calls, group = _calls_and_group()
    base = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    batches = [  # (event id, customer, type, minutes after 10:00, amount, channel)
        [
            ("e1", "a", "pay", 0, 40.0, "web"),
            ("e2", "a", "call", 20, None, "phone"),
            ("e3", "a", "call", 80, None, "chat"),
        ],
        [("e4", "a", "pay", 70, 150.0, "app"), ("e5", "a", "call", 75, None, "web"), ("e6", "b", "call", 5, 7.5, None)],
        [
            ("e7", "a", "call", 30, None, "store"),
            ("e8", "a", "call", 100, None, "phone"),
            ("e9", "a", "pay", 100, 5.0, "web"),
        ],
    ]
    path, checkpoint, out = str(tmp_path / "events"), str(tmp_path / "cp"), []
    for batch in batches:
        spark.createDataFrame(
            [(i, c, k, base + timedelta(minutes=m), a, ch) for i, c, k, m, a, ch in batch],
            "event_id string, customer_id string, event_type string, ts timestamp, amount double, channel string",
        ).coalesce(1).write.format("delta").mode("append").save(path)  # one file: one micro-batch
    stream = spark.readStream.format("delta").option("maxFilesPerTrigger", 1).load(path)
    writer = (
        firings_with_features(spark, None, [group], stream, [calls])
        .writeStream.option("checkpointLocation", checkpoint)
        .foreachBatch(lambda df, batch_id: out.extend((batch_id, r.asDict()) for r in df.collect()))
        .trigger(availableNow=True)
    )
    with rocksdb_state_store(spark):
        query = writer.start()
    query.awaitTermination()
    assert query.exception() is None
    # Spark drops a batch's rows older than the previous batch's watermark: e6 (b at 10:05) in the second batch
    # still fires (there was none yet); e7 (a at 10:30) in the third does not (11:10 = 11:20 - 10 minutes), but
    # counts in e8's features; e5 (11:15) is late too, not for the watermark, and fires before e3 (11:20)
    assert sorted(r["event_id"] for _, r in out) == ["e2", "e3", "e5", "e6", "e8"]
    names = ("event_id", "customer_id", "event_type", "ts", "amount", "channel")
    landed = {i: n for n, batch in enumerate(batches) for i, *_ in batch}  # the firing's batch: its event's
    for _, row in out:
        seen = [
            dict(zip(names, (i, c, k, base + timedelta(minutes=m), a, ch), strict=True))
            for batch in batches[: landed[row["event_id"]] + 1]
            for i, c, k, m, a, ch in batch
        ]
        at = row["firing_ts"].replace(tzinfo=UTC) if row["firing_ts"].tzinfo is None else row["firing_ts"]
        got = json.loads(row[FEATURES])["act"]
        for name, value in _expected(seen, row["customer_id"], at).items():
            assert _close(got[name], value), f"{row['event_id']} {name}: {got[name]} != {value}"


VECTOR_BATCHES = [  # (event id, customer, type, minutes after 10:00 on 2026-03-01, amount, channel), a file each
    [("e1", "a", "pay", 0, 40.0, "web"), ("e2", "a", "call", 20, None, "phone"), ("e3", "b", "pay", 5, 7.5, None)],
    [("e4", "a", "pay", -60, 150.0, "app"), ("e5", "a", "call", -200, None, "web")],
    [("e6", "a", "call", 300, None, "chat"), ("e7", "c", "pay", 290, 3.0, "store")],
    [("e8", "a", "pay", 330, 12.0, "web")],
    [("e9", "b", "call", -30, None, "phone"), ("e10", "c", "call", 310, None, "app")],
    [("e11", "b", "pay", -15, 20.0, "web")],
    [("e12", "d", "pay", 1440, 1.0, "web")],  # a day later: the watermark passes every other entity's timer
    [("e13", "d", "pay", 1450, 2.0, "app")],
]


def _land_batches(spark, tmp_path, batches) -> str:
    """Each batch as one Delta file of events (one micro-batch each at one file per trigger); the table's path."""
    base = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    path = str(tmp_path / "events")
    for batch in batches:
        spark.createDataFrame(
            [(i, c, k, base + timedelta(minutes=m), a, ch) for i, c, k, m, a, ch in batch],
            "event_id string, customer_id string, event_type string, ts timestamp, amount double, channel string",
        ).coalesce(1).write.format("delta").mode("append").save(path)
    return path


def _calls_and_group():
    """Group ``act`` of the feature windows' spec, and a trigger firing on every call."""
    from common.compile import compile_usecase
    from common.spec.usecase import UseCase
    from tests.test_feature_windows import SPEC

    group = compile_usecase(UseCase.model_validate(SPEC)).group("act")
    calls = TriggerPlan(**{**TRIGGER.__dict__, "name": "call", "kind": "any_of", "within_s": 0, "cooldown_s": 0})
    return TriggerPlan(**{**calls.__dict__, "conditions": ("event_type = 'call'",)}), group


def test_the_trigger_operator_emits_the_feature_streams_vectors(spark, tmp_path):
    """With ``vectors`` (features and triggers in one ``loom stream``), the trigger operator that carries a
    group's tiles emits, batch by batch, exactly the vectors the group's own feature operator emits: a late
    event within the newest event's windows counts (e4), one beyond them does not (e5), and an entity whose
    timer fired (b, once the watermark passed its tiles) keeps its tiles for late events of its window (e9, then e11:
    a batch of the entity's own after the watermark passed does not evict them either)."""
    from common.features.streaming import OUT, entity_features
    from common.runtime.state_store import rocksdb_state_store
    from common.triggers.shared_state import GROUP, firings_with_features

    calls, group = _calls_and_group()
    path = _land_batches(spark, tmp_path, VECTOR_BATCHES)

    def drained(frame, mode: str, name: str) -> list[set[tuple[str, str]]]:
        out: list[set[tuple[str, str]]] = []

        def collect(df, _):
            vectors = {(r["customer_id"], r[OUT]) for r in df.collect() if r[OUT] is not None}
            if vectors:
                out.append(vectors)

        writer = (
            frame.writeStream.outputMode(mode)
            .option("checkpointLocation", str(tmp_path / name))
            .foreachBatch(collect)
            .trigger(availableNow=True)
        )
        with rocksdb_state_store(spark):
            query = writer.start()
        query.awaitTermination()
        assert query.exception() is None
        return out

    def stream():
        return spark.readStream.format("delta").option("maxFilesPerTrigger", 1).load(path)

    alone = drained(entity_features(spark, None, group, stream()), "update", "features")
    merged = firings_with_features(spark, None, [group], stream(), [calls], vectors=True)
    assert GROUP in merged.columns
    together = drained(merged, "append", "triggers")
    assert [sorted(c for c, _ in batch) for batch in alone] == [
        ["a", "b"],
        ["a"],
        ["a", "c"],
        ["a"],
        ["b", "c"],
        ["b"],
        ["d"],
        ["d"],
    ]
    assert together == alone


def test_the_operator_keeps_each_entitys_one_timer_in_its_state(spark, tmp_path):
    """The shared operator keeps the entity's one event-time timer in its state (``w``) and moves it from
    there, without listing the timers: after batches with firings, late events and fired timers, the timers
    Spark holds (the state data source) are exactly those the states name, in both modes; with vectors, an
    entity whose triggers no longer matter keeps its tiles and no timer."""
    import orjson

    from common.runtime.state_store import rocksdb_state_store
    from common.triggers.shared_state import firings_with_features

    calls, group = _calls_and_group()
    path = _land_batches(spark, tmp_path, VECTOR_BATCHES)
    for vectors in (False, True):
        checkpoint = str(tmp_path / f"cp-{vectors}")
        stream = spark.readStream.format("delta").option("maxFilesPerTrigger", 1).load(path)
        writer = (
            firings_with_features(spark, None, [group], stream, [calls], vectors=vectors)
            .writeStream.option("checkpointLocation", checkpoint)
            .foreachBatch(lambda df, _: df.count())
            .trigger(availableNow=True)
        )
        with rocksdb_state_store(spark):
            query = writer.start()
        query.awaitTermination()
        assert query.exception() is None
        state = spark.read.format("statestore").option("stateVarName", "shared").load(checkpoint)
        named = {r["key"][0]: orjson.loads(r["value"][0]) for r in state.collect()}
        timers = spark.read.format("statestore").option("readRegisteredTimers", "true").load(checkpoint)
        held = [(r["key"][0], r["expiration_timestamp_ms"]) for r in timers.collect()]
        assert held, "some entity still waits for its timer"
        assert sorted(held) == sorted((key, s["w"]) for key, s in named.items() if s.get("w") is not None), vectors
        if vectors:  # a, b and c: the watermark passed what their triggers could match, not their tiles
            idle = sorted(key for key, s in named.items() if s["w"] is None)
            assert idle == ["a", "b", "c"] and all(named[key]["g"][0]["s"]["t"] for key in idle), named
