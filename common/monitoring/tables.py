"""The monitoring Delta tables: ``lake/<usecase>/monitoring/{metrics,drift}``."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from common.lake.delta import table_exists
from common.lake.paths import monitoring_path
from common.settings import Paths

METRICS, DRIFT = "metrics", "drift"


def read_table(spark: SparkSession, work: Paths, usecase: str, name: str) -> DataFrame | None:
    """A monitoring table, or None when nothing was written yet."""
    path = monitoring_path(work, usecase, name)
    return spark.read.format("delta").load(path) if table_exists(spark, path) else None


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
