"""The monitoring Delta tables: ``lake/<usecase>/monitoring/{metrics,drift}``."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from common.features.offline import table_exists
from common.settings import Paths

METRICS, DRIFT = "metrics", "drift"


def monitoring_path(work: Paths, usecase: str, name: str) -> str:
    """Path of a monitoring table (``metrics`` or ``drift``)."""
    return work.table(usecase, "monitoring", name)


def replace_rows(spark: SparkSession, rows: DataFrame, path: str, where: str) -> None:
    """Atomically replace the rows matching ``where`` (a SQL predicate every new row satisfies) with ``rows``:
    one Delta commit, so a re-run gives the same table and a reader never sees a half-written result."""
    writer = rows.write.format("delta").mode("overwrite")
    if table_exists(spark, path):
        writer = writer.option("replaceWhere", where)
    writer.save(path)


def read_table(spark: SparkSession, work: Paths, usecase: str, name: str) -> DataFrame | None:
    """A monitoring table, or None when nothing was written yet."""
    path = monitoring_path(work, usecase, name)
    return spark.read.format("delta").load(path) if table_exists(spark, path) else None


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
