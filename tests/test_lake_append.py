"""Idempotent micro-batch appends (common.lake.append): once per (app id, version), from the driver (delta-rs)
for small batches and through Spark's writer otherwise, the two interchangeable on one table."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
from deltalake.exceptions import SchemaMismatchError
from pyspark.sql import functions as F

from common.lake import append as append_module
from common.lake.append import append_once

SCHEMA = "k string, ts timestamp, day date, x double, tags map<string,double>"


def _rows(spark, start: int, count: int):
    data = [
        (f"k{i}", datetime(2026, 1, 14, 10, i % 60, tzinfo=UTC), date(2026, 1, 14 + i % 2), i / 3, {"a": float(i)})
        for i in range(start, start + count)
    ]
    return spark.createDataFrame(data, SCHEMA)


def _commits(path) -> list[dict]:
    """Each commit's engine and transaction, in order."""
    out = []
    for file in sorted((path / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        info = next(a["commitInfo"] for a in actions if "commitInfo" in a)
        txn = next((a["txn"] for a in actions if "txn" in a), None)
        engine = "delta-rs" if "delta-rs" in str(info.get("engineInfo", "")) else "spark"
        out.append({"engine": engine, "txn": (txn["appId"], txn["version"]) if txn else None})
    return out


def _sorted(spark, path):
    return sorted(
        (r["k"], r["ts"], r["day"], r["x"], tuple(sorted(r["tags"].items())))
        for r in spark.read.format("delta").load(str(path)).collect()
    )


def test_a_version_is_written_once_and_an_empty_batch_records_it(spark, tmp_path):
    path = tmp_path / "t"
    append_once(_rows(spark, 0, 5), str(path), "app", 0, partition_by=["day"])  # creates: Spark's writer
    append_once(_rows(spark, 5, 5), str(path), "app", 1)  # small, table exists: delta-rs
    append_once(_rows(spark, 5, 5), str(path), "app", 1)  # replayed: skipped
    append_once(_rows(spark, 0, 0), str(path), "app", 2)  # empty: commits the version anyway
    append_once(_rows(spark, 10, 5), str(path), "app", 2)  # a retry of version 2 with rows: skipped
    append_once(_rows(spark, 10, 5), str(path), "other", 0)  # another app id has versions of its own

    assert [c["engine"] for c in _commits(path)] == ["spark", "delta-rs", "delta-rs", "delta-rs"]
    assert [c["txn"] for c in _commits(path)] == [("app", 0), ("app", 1), ("app", 2), ("other", 0)]
    table = spark.read.format("delta").load(str(path))
    assert table.count() == 15
    assert table.groupBy("k").count().where("count > 1").count() == 0
    assert sorted(p.name for p in path.iterdir() if p.name.startswith("day=")) == ["day=2026-01-14", "day=2026-01-15"]


def test_driver_and_spark_appends_write_the_same_rows_and_respect_each_others_versions(spark, tmp_path, monkeypatch):
    by_driver, by_spark = tmp_path / "driver", tmp_path / "spark"
    for path in (by_driver, by_spark):
        append_once(_rows(spark, 0, 3), str(path), "app", 0, partition_by=["day"])
    append_once(_rows(spark, 3, 40), str(by_driver), "app", 1)
    monkeypatch.setattr(append_module, "DRIVER_ROWS", 10)  # 40 rows: more than the driver takes
    append_once(_rows(spark, 3, 40), str(by_spark), "app", 1)
    assert [c["engine"] for c in _commits(by_spark)] == ["spark", "spark"]
    assert _sorted(spark, by_driver) == _sorted(spark, by_spark)

    # Spark's writer skips a version delta-rs committed, and delta-rs one Spark committed
    append_once(_rows(spark, 100, 40), str(by_driver), "app", 1)
    monkeypatch.setattr(append_module, "DRIVER_ROWS", 50_000)
    append_once(_rows(spark, 100, 5), str(by_spark), "app", 1)
    assert _sorted(spark, by_driver) == _sorted(spark, by_spark)
    assert len(_sorted(spark, by_driver)) == 43


def test_merge_schema_lets_a_new_column_in_from_the_driver(spark, tmp_path):
    path = tmp_path / "t"
    append_once(_rows(spark, 0, 3), str(path), "app", 0)
    wider = _rows(spark, 3, 2).withColumn("extra", F.lit(7).cast("long"))
    with pytest.raises(SchemaMismatchError):  # without merge_schema a new column is refused, as Spark's writer would
        append_once(wider, str(path), "app", 1)
    append_once(wider, str(path), "app", 1, merge_schema=True)
    table = spark.read.format("delta").load(str(path))
    assert table.count() == 5
    assert sorted(r["extra"] for r in table.collect() if r["extra"] is not None) == [7, 7]


def test_driver_appends_checkpoint_at_sparks_interval_and_spark_reads_past_it(spark, tmp_path):
    path = tmp_path / "t"
    append_once(_rows(spark, 0, 2), str(path), "app", 0)  # version 0, by Spark
    for version in range(1, 12):  # versions 1-11, by delta-rs: one checkpoint, at 10
        append_once(_rows(spark, version * 2, 2), str(path), "app", version)
    checkpoints = sorted(p.name for p in (path / "_delta_log").glob("*.checkpoint.parquet"))
    assert checkpoints == [f"{10:020d}.checkpoint.parquet"]
    assert json.loads((path / "_delta_log" / "_last_checkpoint").read_text())["version"] == 10
    assert len(_sorted(spark, path)) == 24
    append_once(_rows(spark, 100, 2), str(path), "app", 5)  # replayed after the checkpoint: still skipped
    assert len(_sorted(spark, path)) == 24


def test_a_log_folder_without_a_commit_is_no_table_for_the_driver(spark, tmp_path):
    """A process killed while Spark created the table (``_delta_log`` made, no commit written yet, as the
    whole-stream kill test once left a feature history): the driver does not append to it, Spark's writer
    creates the table, and then the driver appends."""
    path = tmp_path / "t"
    (path / "_delta_log").mkdir(parents=True)
    assert not append_module.driver_appendable(str(path))
    assert append_module.append_rows_once(_rows(spark, 0, 3).toArrow(), str(path), "app", 0) is False
    append_once(_rows(spark, 0, 3), str(path), "app", 0)
    assert append_module.driver_appendable(str(path))
    assert append_module.append_rows_once(_rows(spark, 3, 2).toArrow(), str(path), "app", 1)
    assert [c["engine"] for c in _commits(path)] == ["spark", "delta-rs"]
    assert spark.read.format("delta").load(str(path)).count() == 5
