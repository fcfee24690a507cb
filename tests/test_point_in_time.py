"""Point-in-time lookups agree with a naive scan and never leak the future."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from common.compile import compile_usecase
from common.errors import CompileError
from common.features.point_in_time import HistoryInput, as_of_join
from common.spec.usecase import UseCase
from tests.test_feature_windows import SPEC

T0 = datetime(2026, 3, 1, 12, 0)


@pytest.fixture(scope="module")
def plan():
    spec = {**SPEC, "feature_groups": {"act": {**SPEC["feature_groups"]["act"], "ttl": "2 hours"}}}
    return compile_usecase(UseCase.model_validate(spec)).group("act")


def _history(spark, plan):
    """History rows (key, time, value, write order); a key written twice: the later write wins, a write
    without an order (from before the column existed) is the oldest."""
    rows = [
        ("a", T0, 1.0, 1),
        ("a", T0 + timedelta(minutes=30), 2.5, 7),
        ("a", T0 + timedelta(minutes=30), 2.0, 3),
        ("a", T0 + timedelta(hours=5), 3.5, 1),
        ("a", T0 + timedelta(hours=5), 3.0, None),
        ("b", T0 + timedelta(minutes=10), 7.0, 2),
    ]
    return _history_frame(spark, plan, rows), rows


def _history_frame(spark, plan, rows):
    """A history table of ``rows`` (key, time, first feature's value, write order); other features 0."""
    data = [(k, t, w, v, *([0.0] * (len(plan.feature_names) - 1))) for k, t, v, w in rows]
    schema = ", ".join(
        ["customer_id string", "feature_ts timestamp", "_write_order long"]
        + [f"{n} double" for n in plan.feature_names]
    )
    return spark.createDataFrame(data, schema)


def _naive(rows, entity, t, ttl):
    before = [(ts, -1 if w is None else w, v) for k, ts, v, w in rows if k == entity and t is not None and ts <= t]
    if not before:
        return None
    ts, _, v = max(before)
    return v if (t - ts) <= ttl else None


def test_as_of_matches_a_naive_scan(spark, plan):
    history, rows = _history(spark, plan)
    queries = [
        ("a", T0 - timedelta(minutes=1)),  # before any history: null
        ("a", T0),  # exactly at a feature time: that value counts
        ("a", T0 + timedelta(minutes=29)),
        ("a", T0 + timedelta(minutes=30)),
        ("a", T0 + timedelta(hours=2, minutes=30)),  # exactly at the TTL edge: still valid
        ("a", T0 + timedelta(hours=2, minutes=31)),  # older than the TTL: null
        ("a", T0 + timedelta(hours=6)),
        ("b", T0 + timedelta(hours=1)),
        ("c", T0 + timedelta(hours=1)),  # unknown entity: null
        ("a", T0 + timedelta(minutes=30)),  # duplicate query rows stay two rows
        ("a", None),  # no time: null
    ]
    labels = spark.createDataFrame(
        [(k, t, i) for i, (k, t) in enumerate(queries)], "customer_id string, label_ts timestamp, label int"
    )
    first = plan.feature_names[0]
    found = as_of_join(labels, [HistoryInput(plan, history, (first,), "f_ts")], "label_ts").collect()
    out = {r.label: r for r in found}
    assert len(out) == len(queries)
    for i, (entity, t) in enumerate(queries):
        expected = _naive(rows, entity, t, timedelta(hours=2))
        assert out[i][first] == expected, (entity, t)
        assert (out[i].f_ts is None) == (expected is None), (entity, t)


def test_unknown_feature_is_a_clear_error(spark, plan):
    history, _ = _history(spark, plan)
    labels = spark.createDataFrame([("a", T0)], "customer_id string, label_ts timestamp")
    with pytest.raises(CompileError, match="has no feature"):
        as_of_join(labels, [HistoryInput(plan, history, ("nope",))], "label_ts")


def test_times_far_from_1970_keep_their_order(spark, plan):
    """Times before 1970 and after 2106 (beyond the pre-sort's 32 bits of seconds) still get the naive
    scan's answers, and the pre-sort's bit arithmetic raises nothing in ANSI mode."""
    far = [datetime(1900, 1, 1), datetime(2000, 1, 1), datetime(2200, 1, 1), datetime(2300, 6, 1)]
    rows = [(k, t, float(i), 1) for i, t in enumerate(far) for k in ("a", "b", "zz")]
    history = _history_frame(spark, plan, rows)
    queries = [(k, t + delta) for t in far for k in ("a", "zz") for delta in (timedelta(0), timedelta(hours=1))]
    queries.append(("b", far[0] - timedelta(seconds=1)))
    labels = spark.createDataFrame(
        [(k, t, i) for i, (k, t) in enumerate(queries)], "customer_id string, label_ts timestamp, label int"
    )
    first = plan.feature_names[0]
    found = {
        r.label: r[first] for r in as_of_join(labels, [HistoryInput(plan, history, (first,))], "label_ts").collect()
    }
    assert found == {i: _naive(rows, k, t, timedelta(hours=2)) for i, (k, t) in enumerate(queries)}
