"""Point-in-time training sets: no leakage, the boundary rule, TTL, pinned versions.

History tables are written directly (real Delta) with adversarial timestamps;
the expected values come from a naive scan in Python.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from common.compile import compile_usecase
from common.compile.plan import FEATURE_TS
from common.errors import DataError
from common.features.offline import with_storage_columns
from common.lake.paths import history_path
from common.models.training_set import create_training_set
from common.settings import Paths
from common.spec import load_usecase

PLAN = compile_usecase(load_usecase("churn"))
ACTIVITY, PROFILE = PLAN.group("activity"), PLAN.group("profile")
T = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


def _write_history(spark, work: Paths, group, rows: list[tuple[str, datetime, float]], mode: str = "overwrite"):
    """One history row per (key, time); every feature of the group gets ``value``."""
    data = [(key, ts, *([value] * len(group.feature_names))) for key, ts, value in rows]
    frame = spark.createDataFrame(
        data,
        f"customer_id string, {FEATURE_TS} timestamp, " + ", ".join(f"{n} double" for n in group.feature_names),
    )
    frame = with_storage_columns(group, frame)
    writer = frame.write.format("delta").mode(mode)
    if mode == "overwrite":
        writer = writer.partitionBy("_date")
    writer.save(history_path(work, group))


def _labels(spark, rows: list[tuple[str, datetime]]):
    return spark.createDataFrame(
        [(k, t, i) for i, (k, t) in enumerate(rows)], "customer_id string, label_ts timestamp, row_id int"
    )


@pytest.fixture(scope="module")
def adversarial(spark, tmp_path_factory):
    work = Paths(tmp_path_factory.mktemp("pit-home"))
    day = timedelta(days=1)
    _write_history(
        spark,
        work,
        ACTIVITY,
        [
            ("before", T - US, 1.0),  # the newest row before t: the answer
            ("before", T + US, 99.0),  # one microsecond after t: leakage if seen
            ("before", T + day, 98.0),
            ("boundary", T - day, 2.0),
            ("boundary", T, 3.0),  # exactly at t: counts (feature_ts <= t)
            ("stale", T - 30 * day - US, 4.0),  # older than the 30-day TTL at t: missing
            ("fresh_edge", T - 30 * day, 5.0),  # exactly the TTL old: still valid
            ("only_future", T + US, 97.0),
        ],
    )
    _write_history(spark, work, PROFILE, [("before", T - 400 * day, 7.0), ("stale", T + day, 96.0)])
    labels = _labels(spark, [(k, T) for k in ["before", "boundary", "stale", "fresh_edge", "only_future", "unknown"]])
    result = create_training_set(
        labels, ["activity.support_calls_7d", "profile.tenure_days"], plan=PLAN, work=work, time_column="label_ts"
    )
    rows = {r["customer_id"]: r for r in result.frame.collect()}
    return work, result, rows


def test_rows_after_the_label_time_never_leak(adversarial):
    _, _, rows = adversarial
    assert rows["before"]["support_calls_7d"] == 1.0
    assert rows["only_future"]["support_calls_7d"] is None
    assert rows["stale"]["tenure_days"] is None  # its only profile row is a day after the label
    seen = {r["support_calls_7d"] for r in rows.values()} | {r["tenure_days"] for r in rows.values()}
    assert not seen & {99.0, 98.0, 97.0, 96.0}


def test_a_row_exactly_at_the_label_time_counts(adversarial):
    assert adversarial[2]["boundary"]["support_calls_7d"] == 3.0


def test_ttl_makes_old_values_missing_and_keeps_the_edge(adversarial):
    _, _, rows = adversarial
    assert rows["stale"]["support_calls_7d"] is None
    assert rows["fresh_edge"]["support_calls_7d"] == 5.0
    # profile has no ttl: a 400-day-old value is still the value
    assert rows["before"]["tenure_days"] == 7.0


def test_every_label_row_is_kept_once_with_its_columns(adversarial):
    _, result, rows = adversarial
    assert result.frame.count() == 6 and len(rows) == 6
    assert rows["unknown"]["support_calls_7d"] is None
    assert sorted(r["row_id"] for r in rows.values()) == list(range(6))
    assert result.features == ["support_calls_7d", "tenure_days"]


def test_versions_are_recorded_and_rebuild_an_identical_frame(spark, adversarial):
    work, result, _ = adversarial
    assert {name: v.version for name, v in result.versions.items()} == {"activity": 0, "profile": 0}
    labels = _labels(spark, [(k, T) for k in ["before", "boundary", "stale", "fresh_edge", "only_future", "unknown"]])
    refs = ["activity.support_calls_7d", "profile.tenure_days"]
    # the table moves on: a new row that would change "before"
    _write_history(spark, work, ACTIVITY, [("before", T - 2 * US, 55.0), ("before", T - US / 2, 56.0)], mode="append")
    latest = create_training_set(labels, refs, plan=PLAN, work=work, time_column="label_ts")
    assert latest.versions["activity"].version == 1
    changed = {r["customer_id"]: r["support_calls_7d"] for r in latest.frame.collect()}
    assert changed["before"] == 56.0
    pinned = create_training_set(labels, refs, plan=PLAN, work=work, time_column="label_ts", versions=result.versions)
    assert pinned.frame.schema == result.frame.schema
    assert sorted(pinned.frame.collect()) == sorted(result.frame.collect())


def test_random_histories_match_a_naive_scan(spark, tmp_path):
    work = Paths(tmp_path)
    rng = random.Random(11)
    keys = [f"C{i}" for i in range(12)]
    history = []
    for key in keys:
        for _ in range(rng.randint(0, 15)):
            history.append((key, T + timedelta(hours=rng.randint(-24 * 45, 24 * 3)), float(rng.randint(0, 1000))))
    history = list({(k, t): (k, t, v) for k, t, v in history}.values())  # one row per (key, time)
    _write_history(spark, work, ACTIVITY, history)
    _write_history(spark, work, PROFILE, [("C0", T - timedelta(days=3), 1.0)])
    queries = [(rng.choice(keys + ["nobody"]), T + timedelta(hours=rng.randint(-24 * 40, 24 * 3))) for _ in range(200)]
    # some labels exactly at history times: the boundary
    queries += [(k, t) for k, t, _ in history[:20]]
    result = create_training_set(
        _labels(spark, queries), ["activity.outages_7d"], plan=PLAN, work=work, time_column="label_ts"
    )
    got = {r["row_id"]: r["outages_7d"] for r in result.frame.collect()}
    ttl = timedelta(seconds=ACTIVITY.ttl_s)
    for row_id, (key, at) in enumerate(queries):
        seen = [(t, v) for k, t, v in history if k == key and t <= at]
        expected = max(seen)[1] if seen and at - max(seen)[0] <= ttl else None
        assert got[row_id] == expected, (key, at)


def test_missing_history_table_names_the_fix(spark, tmp_path):
    labels = _labels(spark, [("C1", T)])
    with pytest.raises(DataError, match="loom backfill --usecase churn"):
        create_training_set(labels, ["activity.*"], plan=PLAN, work=Paths(tmp_path), time_column="label_ts")


def test_labels_without_the_entity_key_are_refused(spark, adversarial):
    work = adversarial[0]
    labels = _labels(spark, [("C1", T)]).withColumnRenamed("customer_id", "id")
    with pytest.raises(DataError, match="customer_id"):
        create_training_set(labels, ["activity.*"], plan=PLAN, work=work, time_column="label_ts")


def test_no_cross_join_in_the_plan(spark, adversarial):
    work = adversarial[0]
    labels = _labels(spark, [("before", T)])
    frame = create_training_set(labels, ["activity.*", "profile.*"], plan=PLAN, work=work, time_column="label_ts").frame
    plan = frame._jdf.queryExecution().executedPlan().toString()
    assert "CartesianProduct" not in plan and "BroadcastNestedLoopJoin" not in plan
    assert plan.count("Exchange hashpartitioning") == 1  # one shuffle for all groups


def test_latest_version_reads_the_delta_log_listing(spark, tmp_path):
    from delta.tables import DeltaTable

    from common.models.training_set import latest_version

    path = str(tmp_path / "t")
    assert latest_version(spark, path) is None  # no table: the caller's "run backfill first" error
    for i in range(3):
        spark.range(i + 1).write.format("delta").mode("append").save(path)
    expected = DeltaTable.forPath(spark, path).history(1).select("version").first()[0]
    assert latest_version(spark, path) == expected == 2
    assert latest_version(spark, f"file://{path}") == 2
