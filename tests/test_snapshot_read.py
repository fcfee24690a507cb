"""Reading a Delta table's current rows from delta-rs' file list (common.lake.snapshot_read): the rows Spark's
Delta reader returns, files outside the time range skipped, and Spark's reader wherever a file list is not enough."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.errors import DataError
from common.lake.append import append_once
from common.lake.snapshot_read import read_bronze_between, read_current
from common.settings import Paths

SCHEMA = "k string, ts timestamp, x double"


def _rows(spark, start: int, count: int, hour: int):
    data = [(f"k{i}", datetime(2026, 1, 14, hour, i % 60, tzinfo=UTC), i / 3) for i in range(start, start + count)]
    return spark.createDataFrame(data, SCHEMA)


def _table(spark, path) -> None:
    """Hour 8 by Spark's writer (creates the table), hours 10 and 12 by delta-rs, one commit each."""
    append_once(_rows(spark, 0, 4, 8), str(path), "app", 0)
    append_once(_rows(spark, 4, 4, 10), str(path), "app", 1)
    append_once(_rows(spark, 8, 4, 12), str(path), "app", 2)


def _sorted(frame):
    return sorted(tuple(row) for row in frame.collect())


def test_current_rows_equal_sparks_and_a_time_range_skips_whole_files(spark, tmp_path):
    path = tmp_path / "t"
    _table(spark, path)
    delta = spark.read.format("delta").load(str(path))
    assert _sorted(read_current(spark, str(path))) == _sorted(delta)
    assert len(_sorted(delta)) == 12

    since, until = datetime(2026, 1, 14, 10, 0, tzinfo=UTC), datetime(2026, 1, 14, 10, 59, tzinfo=UTC)
    ranged = read_current(spark, str(path), time_column="ts", since=since, until=until)
    assert len(ranged.inputFiles()) == 1  # the files of hours 8 and 12 hold no row of the range
    assert _sorted(ranged) == _sorted(delta.where(f"ts between '{since.isoformat()}' and '{until.isoformat()}'"))
    # a naive bound is local time, as PySpark collects timestamps
    naive = datetime(2026, 1, 14, 12, 0, tzinfo=UTC).astimezone().replace(tzinfo=None)
    assert len(read_current(spark, str(path), time_column="ts", since=naive).inputFiles()) == 1
    assert read_current(spark, str(path), time_column="ts", since=datetime(2027, 1, 1, tzinfo=UTC)).count() == 0


def test_an_empty_table_reads_as_no_rows_with_its_schema(spark, tmp_path):
    path = tmp_path / "empty"
    _rows(spark, 0, 0, 8).write.format("delta").save(str(path))  # a table with no file, as a stream creates bronze
    empty = read_current(spark, str(path), time_column="ts", since=datetime(2026, 1, 1, tzinfo=UTC))
    assert empty.count() == 0 and empty.columns == ["k", "ts", "x"]


def test_tables_a_file_list_cannot_read_go_through_sparks_reader(spark, tmp_path):
    # deletion vectors: the files still hold the deleted row, only the log hides it
    path = tmp_path / "dv"
    _rows(spark, 0, 6, 8).write.format("delta").option("delta.enableDeletionVectors", "true").save(str(path))
    spark.sql(f"DELETE FROM delta.`{path}` WHERE k = 'k3'")
    assert sorted(r["k"] for r in read_current(spark, str(path)).collect()) == ["k0", "k1", "k2", "k4", "k5"]

    # partitioned: the partition column lives in the log and the folder names, not the files
    path = tmp_path / "parted"
    _rows(spark, 0, 3, 8).write.format("delta").partitionBy("k").save(str(path))
    assert sorted(r["k"] for r in read_current(spark, str(path)).collect()) == ["k0", "k1", "k2"]


def test_bronze_that_was_never_ingested_says_what_to_run(spark, tmp_path):
    with pytest.raises(DataError, match="loom ingest --usecase churn"):
        read_bronze_between(spark, Paths(tmp_path), "churn", "events", "ts")
