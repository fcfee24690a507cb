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
    rows = [
        ("a", T0, 1.0),
        ("a", T0 + timedelta(minutes=30), 2.0),
        ("a", T0 + timedelta(hours=5), 3.0),
        ("b", T0 + timedelta(minutes=10), 7.0),
    ]
    data = [(k, t, v, *([0.0] * (len(plan.feature_names) - 1))) for k, t, v in rows]
    schema = ", ".join(["customer_id string", "feature_ts timestamp"] + [f"{n} double" for n in plan.feature_names])
    return spark.createDataFrame(data, schema), rows


def _naive(rows, entity, t, ttl):
    before = [(ts, v) for k, ts, v in rows if k == entity and ts <= t]
    if not before:
        return None
    ts, v = max(before)
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
    ]
    labels = spark.createDataFrame(
        [(k, t, i) for i, (k, t) in enumerate(queries)], "customer_id string, label_ts timestamp, label int"
    )
    first = plan.feature_names[0]
    found = as_of_join(labels, [HistoryInput(plan, history, (first,), "f_ts")], "label_ts").collect()
    out = {r.label: r for r in found}
    assert len(out) == len(queries)
    for i, (entity, t) in enumerate(queries):
        assert out[i][first] == _naive(rows, entity, t, timedelta(hours=2)), (entity, t)


def test_unknown_feature_is_a_clear_error(spark, plan):
    history, _ = _history(spark, plan)
    labels = spark.createDataFrame([("a", T0)], "customer_id string, label_ts timestamp")
    with pytest.raises(CompileError, match="has no feature"):
        as_of_join(labels, [HistoryInput(plan, history, ("nope",))], "label_ts")
