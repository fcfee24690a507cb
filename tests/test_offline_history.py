"""The offline history's write and read rules on small hand-made tables (real Delta):

* the stream's append is exactly once per (app id, batch id);
* a key (entity, feature_ts) written twice reads as its latest write, in every reader's helper and in the
  point-in-time join's window;
* ``compact`` leaves one row per key, changes no answer and is idempotent.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from common.compile import compile_usecase
from common.compile.plan import FEATURE_TS
from common.features import offline
from common.features.compaction import compact
from common.features.point_in_time import HistoryInput, as_of_join
from common.lake.paths import history_path
from common.settings import Paths
from common.spec import load_usecase

PLAN = compile_usecase(load_usecase("churn"))
GROUP = PLAN.group("activity")
T = datetime(2026, 2, 3, 10, 0)


def _rows(spark, rows: list[tuple[str, datetime, float]]):
    """History rows whose every feature is ``value``."""
    data = [(k, t, *([v] * len(GROUP.feature_names))) for k, t, v in rows]
    schema = f"customer_id string, {FEATURE_TS} timestamp, " + ", ".join(f"{n} double" for n in GROUP.feature_names)
    return spark.createDataFrame(data, schema)


@pytest.fixture
def work(tmp_path):
    return Paths(tmp_path / "home")


def _version(spark, path: str) -> int:
    return DeltaTable.forPath(spark, path).history(1).select("version").first()[0]


def _written_twice(spark, work):
    """Batch 0: a at T (1.0), b at T (5.0); batch 1: a at T again (2.0, a late event changed it) and a at T+1h."""
    path = history_path(work, GROUP)
    offline.append(spark, GROUP, _rows(spark, [("a", T, 1.0), ("b", T, 5.0)]), path, "app-1", 0)
    later = [("a", T, 2.0), ("a", T + timedelta(hours=1), 3.0)]
    offline.append(spark, GROUP, _rows(spark, later), path, "app-1", 1)
    return path


def test_a_replayed_batch_appends_nothing(spark, work):
    path = _written_twice(spark, work)
    version, rows = _version(spark, path), spark.read.format("delta").load(path).count()
    offline.append(spark, GROUP, _rows(spark, [("a", T, 9.0)]), path, "app-1", 1)  # batch 1 again
    offline.append(spark, GROUP, _rows(spark, [("a", T, 9.0)]), path, "app-1", 0)  # an older one
    assert (_version(spark, path), spark.read.format("delta").load(path).count()) == (version, rows)
    offline.append(spark, GROUP, _rows(spark, [("c", T, 4.0)]), path, "app-2", 1)  # a new checkpoint's app id
    assert spark.read.format("delta").load(path).count() == rows + 1


def test_every_reader_takes_the_latest_write_of_a_key(spark, work):
    path = _written_twice(spark, work)
    first = GROUP.feature_names[0]
    raw = offline.load_history(spark, path)
    assert raw.where((F.col("customer_id") == "a") & (F.col(FEATURE_TS) == T)).count() == 2
    read = {(r.customer_id, r[FEATURE_TS]): r[first] for r in offline.read_history(spark, work, GROUP).collect()}
    assert read == {("a", T): 2.0, ("b", T): 5.0, ("a", T + timedelta(hours=1)): 3.0}
    newest = {r.customer_id: r[first] for r in offline.latest_rows(raw, GROUP, per_entity=True).collect()}
    assert newest == {"a": 3.0, "b": 5.0}
    # the as-of join breaks equal feature_ts by write order, whatever order the rows arrive in
    labels = spark.createDataFrame(
        [("a", T, 0), ("a", T + timedelta(minutes=30), 1), ("a", T + timedelta(hours=2), 2)],
        "customer_id string, label_ts timestamp, i int",
    )
    for history in (raw, raw.orderBy(F.col(offline.WRITE_ORDER).desc())):
        found = as_of_join(labels, [HistoryInput(GROUP, history, (first,))], "label_ts").collect()
        assert {r.i: r[first] for r in found} == {0: 2.0, 1: 2.0, 2: 3.0}


def test_drift_weighs_the_latest_write_of_a_key(spark, work):
    """Drift weighs each value by the time the online store served it: the latest write of (a, T)."""
    import dataclasses

    from common.monitoring.drift import WEIGHT, recent_features

    _written_twice(spark, work)
    model = PLAN.model("churn").feature_spec
    spec = dataclasses.replace(model, groups=tuple(g for g in model.groups if g.name == "activity"))
    name = spec.groups[0].selected[0]
    served = recent_features(spark, PLAN, spec, work, T, T + timedelta(minutes=30))["activity"]
    assert sorted(zip(served[name], served[WEIGHT], strict=True)) == [(2.0, 1800.0), (5.0, 1800.0)]


def test_compact_keeps_the_latest_row_per_key_and_changes_no_answer(spark, work):
    path = _written_twice(spark, work)
    before = sorted(offline.read_history(spark, work, GROUP).collect())
    [report] = compact(spark, work, PLAN, ["activity"])
    assert (report.superseded, report.dates) == (1, (T.date(),))
    raw = offline.load_history(spark, path)
    assert raw.count() == 3 and raw.groupBy("customer_id", FEATURE_TS).count().where("count > 1").count() == 0
    assert sorted(offline.read_history(spark, work, GROUP).collect()) == before
    [again] = compact(spark, work, PLAN, ["activity"])
    assert (again.superseded, again.dates) == (0, ())
    assert sorted(offline.read_history(spark, work, GROUP).collect()) == before


def test_compact_without_a_history_says_so(spark, work):
    [report] = compact(spark, work, PLAN, ["profile"])
    assert not report.exists and report.superseded == 0
