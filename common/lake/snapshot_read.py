"""Read a Delta table's current rows without Spark rebuilding the table's state.

Spark's Delta reader lists a snapshot's files by reconstructing the state of the table's log: a few Spark
jobs per read, seconds on a small machine, and a full reconstruction whenever a commit was written by
another engine (delta-rs writes no ``.crc`` file that Spark could start from). The streaming hot path reads
bronze in every micro-batch (ingestion's duplicate check, the triggers' features as of each firing), so that
was most of a small batch's time once the appends themselves were cheap (``common.lake.append``). Measured on
the kill test's day of events after a delta-rs commit, quick JVM, load 5-7: 3.1-4.1 s with Spark's reader,
0.3-0.7 s this way, the same 128 keys.

Here delta-rs lists the snapshot's files from the log (in Rust, milliseconds), drops the files whose
statistics put every row outside the wanted event-time range, and Spark reads the rest as Parquet with the
table's schema. Tables that need more of the Delta protocol to read correctly than a list of files go
through Spark's reader as before: a table off the local file system, a partitioned table (partition values
live in the log, not the files), deletion vectors, column mapping.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from common.lake.delta import local_folder, read_bronze, table_exists
from common.lake.paths import bronze_path
from common.settings import Paths

_NEEDS_SPARK_FEATURES = {"deletionVectors", "columnMapping"}


def read_current(
    spark: SparkSession,
    path: str,
    *,
    time_column: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> DataFrame:
    """The table's current rows; with ``time_column``, files whose rows all lie before ``since`` or after
    ``until`` (by their statistics) are skipped. The caller still filters rows: a kept file may hold others."""
    table = _plain_table(path)
    if table is None:
        return spark.read.format("delta").load(path)
    schema = StructType.fromJson(json.loads(table.schema().to_json()))
    files = _files_in_range(table, time_column, since, until)
    if not files:
        return spark.createDataFrame([], schema)
    root = str(local_folder(path))
    return spark.read.schema(schema).parquet(*[f"{root}/{unquote(name)}" for name in files])


def current_arrow(
    path: str, columns: list[str], *, time_column: str | None = None, since: datetime | None = None
) -> Any:
    """``columns`` of the table's current rows as an Arrow table, read on the driver with no Spark job, or None
    when the table needs Spark's reader (see the module docstring). With ``time_column`` (one of ``columns``),
    only rows at or after ``since``: files entirely older are skipped by their statistics, then rows filtered.

    For the hot path's small look-ups (ingestion's duplicate check of a small batch): the files are read with
    pyarrow, each cast to the table's schema (a Spark-written file and a delta-rs one may store a timestamp
    differently)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    table = _plain_table(path)
    if table is None:
        return None
    schema = pa.schema(table.schema().to_arrow())
    wanted = pa.schema([schema.field(name) for name in columns])
    files = _files_in_range(table, time_column, since, None)
    root = str(local_folder(path))
    if not files:
        return wanted.empty_table()
    dataset = ds.dataset([f"{root}/{unquote(name)}" for name in files], schema=wanted, format="parquet")
    condition = None
    if time_column is not None and since is not None:
        kind = wanted.field(time_column).type
        condition = pc.field(time_column) >= (
            _scalar(since, kind) if pa.types.is_timestamp(kind) else pa.scalar(since, kind)
        )
    return dataset.to_table(columns=columns, filter=condition)


def read_bronze_between(
    spark: SparkSession,
    work: Paths,
    usecase: str,
    source: str,
    time_column: str | None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> DataFrame:
    """One source's bronze rows for the hot path (:func:`read_current`), skipping files outside
    [since, until] of ``time_column``; DataError naming the fix when the source was never ingested."""
    path = bronze_path(work, usecase, source)
    if not table_exists(spark, path):
        return read_bronze(spark, work, usecase, source)  # raises the DataError that says what to run first
    return read_current(spark, path, time_column=time_column, since=since, until=until)


def _plain_table(path: str) -> Any:
    """The delta-rs table at ``path`` when a list of its files is all a reader needs; else None."""
    local = local_folder(path)
    if local is None:
        return None
    from deltalake import DeltaTable

    if not (local / "_delta_log").is_dir():
        return None  # no table: Spark's reader says so
    table = DeltaTable(str(local))
    protocol = table.protocol()
    features = set(protocol.reader_features or ()) | set(protocol.writer_features or ())
    mapped = table.metadata().configuration.get("delta.columnMapping.mode", "none") != "none"
    if table.metadata().partition_columns or features & _NEEDS_SPARK_FEATURES or mapped:
        return None
    return table


def _files_in_range(table: Any, time_column: str | None, since: datetime | None, until: datetime | None) -> list[str]:
    """Relative paths of the snapshot's files that may hold rows in [since, until] of ``time_column``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    actions = pa.table(table.get_add_actions(flatten=True))
    keep = pa.array([True] * actions.num_rows, type=pa.bool_())
    if time_column is not None:
        # a file without statistics for the column is kept: nothing says its rows are out of range
        if since is not None and _is_timestamp(actions, f"max.{time_column}"):
            newest = actions[f"max.{time_column}"]
            keep = pc.and_(keep, pc.or_(pc.is_null(newest), pc.greater_equal(newest, _scalar(since, newest.type))))
        if until is not None and _is_timestamp(actions, f"min.{time_column}"):
            oldest = actions[f"min.{time_column}"]
            keep = pc.and_(keep, pc.or_(pc.is_null(oldest), pc.less_equal(oldest, _scalar(until, oldest.type))))
    return actions.filter(keep)["path"].to_pylist()


def _is_timestamp(actions: Any, column: str) -> bool:
    import pyarrow as pa

    return column in actions.column_names and pa.types.is_timestamp(actions[column].type)


def _scalar(value: datetime, kind: Any) -> Any:
    """``value`` as an Arrow scalar of the statistics' type. A naive datetime is local time, as PySpark
    returns a collected timestamp; a timestamp without time zone (Spark's TIMESTAMP_NTZ) compares wall times."""
    import pyarrow as pa

    if kind.tz is not None:
        return pa.scalar(value.astimezone(UTC), type=kind)
    return pa.scalar(value.replace(tzinfo=None), type=kind)
