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
from common.settings import Paths

PARTITION = "_date"
SCHEMA_VERSION = "_schema_version"


def history_path(work: Paths, plan: GroupPlan) -> str:
    return work.table(plan.usecase, "features", plan.name)


def tiles_path(work: Paths, plan: GroupPlan) -> str:
    return work.table(plan.usecase, "features", f"{plan.name}__tiles")


def table_exists(spark: SparkSession, path: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, path)


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


def upsert(spark: SparkSession, plan: GroupPlan, rows: DataFrame, path: str) -> None:
    """MERGE rows by (entity, feature_ts): what the streaming job appends, idempotently."""
    from delta.tables import DeltaTable

    rows = with_storage_columns(plan, rows)
    if not table_exists(spark, path):
        rows.limit(0).write.format("delta").partitionBy(PARTITION).mode("ignore").save(path)
    key = plan.entity_key
    (
        DeltaTable.forPath(spark, path)
        .alias("t")
        .merge(
            rows.alias("s"),
            f"t.{key} = s.{key} AND t.{FEATURE_TS} = s.{FEATURE_TS} AND t.{PARTITION} = s.{PARTITION}",
        )
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )


def read_history(spark: SparkSession, work: Paths, plan: GroupPlan) -> DataFrame:
    return spark.read.format("delta").load(history_path(work, plan))
