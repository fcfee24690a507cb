"""The offline feature store: Delta tables of feature history.

Layout: ``lake/<usecase>/features/<group>`` with columns entity key,
``feature_ts``, one double per feature, ``_schema_version`` and ``_date``
(the UTC date of ``feature_ts``, the partition column: backfills and
point-in-time reads prune by date).
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.compile.plan import FEATURE_TS, GroupPlan
from common.lake.delta import table_exists
from common.lake.paths import history_path
from common.settings import Paths

PARTITION = "_date"
SCHEMA_VERSION = "_schema_version"


def with_storage_columns(plan: GroupPlan, history: DataFrame) -> DataFrame:
    """Add the partition date and the schema version the rows were computed with."""
    return history.withColumns(
        {PARTITION: F.to_date(FEATURE_TS), SCHEMA_VERSION: F.lit(plan.schema_version).cast("long")}
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
    writer = rows.write.format("delta").mode("overwrite").option("overwriteSchema", "false")
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


def merge_rows(spark: SparkSession, path: str, rows: DataFrame, keys: list[str]) -> None:
    """Upsert ``rows`` (which carry the ``_date`` partition column) by ``keys``.

    The touched dates are spelled out as literals in the merge condition so that
    Delta only reads and rewrites those partitions, not the whole table.
    """
    from delta.tables import DeltaTable

    if not table_exists(spark, path):
        rows.limit(0).write.format("delta").partitionBy(PARTITION).mode("ignore").save(path)
    dates = sorted(r[0].isoformat() for r in rows.select(PARTITION).distinct().collect() if r[0] is not None)
    if not dates:
        return
    condition = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    listed = ", ".join(f"DATE'{d}'" for d in dates)
    condition += f" AND t.{PARTITION} = s.{PARTITION} AND t.{PARTITION} IN ({listed})"
    (
        DeltaTable.forPath(spark, path)
        .alias("t")
        .merge(rows.alias("s"), condition)
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )


def upsert(spark: SparkSession, plan: GroupPlan, rows: DataFrame, path: str) -> None:
    """MERGE rows by (entity, feature_ts): what the streaming job writes, idempotently."""
    merge_rows(spark, path, with_storage_columns(plan, rows), [plan.entity_key, FEATURE_TS])


def read_history(spark: SparkSession, work: Paths, plan: GroupPlan) -> DataFrame:
    return spark.read.format("delta").load(history_path(work, plan))
