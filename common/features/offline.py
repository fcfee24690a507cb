"""The offline feature store: Delta tables of feature history.

Layout: ``lake/<usecase>/features/<group>`` with columns entity key,
``feature_ts``, one double per feature, ``_schema_version``, ``_write_order``
and ``_date`` (the UTC date of ``feature_ts``, the partition column: backfills
and point-in-time reads prune by date).

Writers only append or replace whole dates: the streaming job appends each
micro-batch (idempotent by ``txnAppId``/``txnVersion``, :func:`append`), the
backfill replaces date ranges (:func:`replace_range`). A key (entity,
``feature_ts``) can therefore hold more than one row: a late event within the
state horizon changes an entity's features without changing its newest event
time, and a later batch appends the new values under the same key. The rule
every reader applies is **latest written wins**: of the rows of one key, the
one with the greatest ``_write_order`` (:func:`latest_rows`, or
:func:`history_order` as a window's tie-breaker). ``loom compact``
(:mod:`common.features.compaction`) rewrites the dates holding such keys off
the hot path, which changes no reader's answer.
"""

from __future__ import annotations

import time
from datetime import date
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from common.compile.plan import FEATURE_TS, GroupPlan
from common.features.prepare import first_per_key
from common.lake.append import append_once, append_rows_once
from common.lake.delta import table_exists
from common.lake.paths import history_path
from common.settings import Paths

PARTITION = "_date"
SCHEMA_VERSION = "_schema_version"
# Which write of a key is the latest: the driver's clock, in µs since the epoch, when the write started (one
# value per write). Not the batch id: it restarts at 0 with a new checkpoint, and a backfill has none. Not
# Delta's commit version (`_metadata.row_commit_version`): it needs row tracking on every history table (a
# protocol upgrade of existing ones, and readers of older Delta cannot read them), while a plain column
# survives compaction, time travel and any reader. Two writes of one key are at least a micro-batch apart
# (seconds), far more than a clock step; a retried batch whose first attempt committed writes nothing
# (txnVersion), so the value of the write that counts is fixed once committed. Rows from before this column
# existed read null: the oldest.
WRITE_ORDER = "_write_order"


def write_order_now() -> int:
    """The :data:`WRITE_ORDER` of a write that starts now."""
    return time.time_ns() // 1000


def with_storage_columns(plan: GroupPlan, history: DataFrame, write_order: int | None = None) -> DataFrame:
    """Add the partition date, the schema version the rows were computed with and the write order
    (default: now)."""
    order = write_order_now() if write_order is None else write_order
    return history.withColumns(
        {
            PARTITION: F.to_date(FEATURE_TS),
            SCHEMA_VERSION: F.lit(plan.schema_version).cast("long"),
            WRITE_ORDER: F.lit(order).cast("long"),
        }
    )


def replace_range(
    spark: SparkSession, plan: GroupPlan, history: DataFrame, path: str, start: date | None, end: date | None
) -> None:
    """Write ``history`` so that it replaces exactly the dates [start, end) (all when None).

    Re-running the same range gives the same table: the backfill is idempotent.
    """
    rows = with_storage_columns(plan, history)
    if start is not None:
        rows = rows.where(F.col(PARTITION) >= F.lit(start))
    if end is not None:
        rows = rows.where(F.col(PARTITION) < F.lit(end))
    # mergeSchema: a history written before `_write_order` existed gains the column
    writer = (
        rows.write.format("delta").mode("overwrite").option("overwriteSchema", "false").option("mergeSchema", "true")
    )
    if table_exists(spark, path) and (start is not None or end is not None):
        conditions = []
        if start is not None:
            conditions.append(f"{PARTITION} >= '{start.isoformat()}'")
        if end is not None:
            conditions.append(f"{PARTITION} < '{end.isoformat()}'")
        writer = writer.option("replaceWhere", " AND ".join(conditions))
    elif not table_exists(spark, path):
        writer = writer.partitionBy(PARTITION)
    writer.save(path)


def append(spark: SparkSession, plan: GroupPlan, rows: DataFrame, path: str, app_id: str, batch_id: int) -> None:
    """Append one micro-batch's rows, exactly once: nothing when ``app_id`` has already committed
    ``batch_id`` (a retried or replayed batch adds nothing). No read of the table, no rewrite."""
    # mergeSchema: a history written before `_write_order` existed gains the column
    append_once(with_storage_columns(plan, rows), path, app_id, batch_id, partition_by=[PARTITION], merge_schema=True)


def append_collected(rows: Any, path: str, app_id: str, batch_id: int) -> bool:
    """:func:`append` for a batch already collected to the driver as Arrow, with :func:`with_storage_columns`'
    columns: a delta-rs commit, no Spark job. False (nothing written) when the table is not a local one that
    exists: then :func:`append` the DataFrame."""
    return append_rows_once(rows, path, app_id, batch_id, merge_schema=True)


def with_write_order(history: DataFrame) -> DataFrame:
    """``history`` with :data:`WRITE_ORDER` (null, the oldest, when its table predates the column)."""
    if WRITE_ORDER in history.columns:
        return history
    return history.withColumn(WRITE_ORDER, F.lit(None).cast("long"))


def history_order(*, descending: bool = False) -> list[Column]:
    """The order of a key's rows in time, then in write order (null first): the last one wins."""
    if descending:
        return [F.col(FEATURE_TS).desc_nulls_last(), F.col(WRITE_ORDER).desc_nulls_last()]
    return [F.col(FEATURE_TS).asc_nulls_first(), F.col(WRITE_ORDER).asc_nulls_first()]


def latest_rows(history: DataFrame, plan: GroupPlan, *, per_entity: bool = False) -> DataFrame:
    """The latest-wins view of ``history``: one row per (entity, ``feature_ts``), the latest written; with
    ``per_entity``, one row per entity, its newest (the latest written at its greatest ``feature_ts``)."""
    by = [plan.entity_key] if per_entity else [plan.entity_key, FEATURE_TS]
    return first_per_key(with_write_order(history), by, history_order(descending=True))


def load_history(spark: SparkSession, path: str) -> DataFrame:
    """Every row of a history table as written (duplicate keys included), with :data:`WRITE_ORDER`."""
    return with_write_order(spark.read.format("delta").load(path))


def read_history(spark: SparkSession, work: Paths, plan: GroupPlan) -> DataFrame:
    """A group's history as readers see it: one row per (entity, ``feature_ts``), the latest written."""
    return latest_rows(load_history(spark, history_path(work, plan)), plan)
