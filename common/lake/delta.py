"""Delta helpers every package uses: does a table exist, read bronze, replace rows atomically."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from common.errors import DataError
from common.lake.paths import bronze_path
from common.settings import Paths

_LOG_FILE = re.compile(r"\d{20}\.(json|checkpoint(\.\d+\.\d+)?\.parquet)|_last_checkpoint")


def local_folder(path: str) -> Path | None:
    """``path`` as a local folder when it names one (no scheme, or ``file:``); else None."""
    if path.startswith("file:"):
        return Path(path[len("file:") :].removeprefix("//"))
    return Path(path) if "://" not in path else None


def table_exists(spark: SparkSession, path: str) -> bool:
    """Whether a Delta table is at ``path``. A local table is one listing of its ``_delta_log`` (a commit or
    a checkpoint there): ``DeltaTable.isDeltaTable`` runs a Spark job, a second or more per call in a
    small job. Other file systems ask Delta."""
    local = local_folder(path)
    if local is not None:
        log_dir = local / "_delta_log"
        return log_dir.is_dir() and any(_LOG_FILE.fullmatch(entry.name) for entry in os.scandir(log_dir))
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, path)


def read_bronze(spark: SparkSession, work: Paths, usecase: str, source: str) -> DataFrame:
    """One source's bronze table; DataError naming the fix when it was never ingested."""
    path = bronze_path(work, usecase, source)
    if not table_exists(spark, path):
        raise DataError(
            f"bronze table for source {source!r} does not exist at {path}. "
            f"Fix: run `loom ingest --usecase {usecase}` first"
        )
    return spark.read.format("delta").load(path)


def replace_rows(spark: SparkSession, rows: DataFrame, path: str, where: str) -> None:
    """Atomically replace the rows matching ``where`` (a SQL predicate every new row satisfies) with ``rows``:
    one Delta commit, so a re-run gives the same table and a reader never sees a half-written result."""
    writer = rows.write.format("delta").mode("overwrite")
    if table_exists(spark, path):
        writer = writer.option("replaceWhere", where)
    writer.save(path)
