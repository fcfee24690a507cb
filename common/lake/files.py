"""The Delta tables of a use case as files on disk: which tables exist, which files are current.

``loom audit-pii`` and ``loom forget`` look at files, not only at the current
version: a file a DELETE or MERGE removed stays on disk (and readable by time
travel) until VACUUM deletes it, and the transaction log keeps per-file
statistics (min/max values) of the first columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from pyspark.sql import SparkSession

DELTA_LOG = "_delta_log"


@dataclass(frozen=True)
class DeltaTableFiles:
    """One Delta table: its folder and the data files of its current version."""

    root: Path
    name: str  # relative to the use case's lake folder, e.g. bronze/customers
    current: frozenset[Path] | None  # None: the table could not be read

    def data_files(self) -> list[Path]:
        """Every Parquet data file on disk under the table, current or not (the log excluded)."""
        return sorted(
            p for p in self.root.rglob("*.parquet") if DELTA_LOG not in p.relative_to(self.root).parts and p.is_file()
        )

    def log_files(self) -> list[Path]:
        """The transaction log's files (commits, checkpoints, checksums)."""
        return sorted(p for p in (self.root / DELTA_LOG).rglob("*") if p.is_file())


def _path_of(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("file", "") else Path(uri)


def table_roots(folder: Path) -> Iterator[Path]:
    """Folders under ``folder`` that are Delta tables (hold a ``_delta_log``), outermost only."""
    if not folder.is_dir():
        return
    if (folder / DELTA_LOG).is_dir():
        yield folder
        return
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            yield from table_roots(child)


def current_files(spark: SparkSession, root: Path) -> frozenset[Path] | None:
    """Data files of the table's current version; None when Spark cannot read the table."""
    try:
        uris = spark.read.format("delta").load(str(root)).inputFiles()
    except Exception:  # a broken or half-written table: callers report it, and still scan its files
        return None
    return frozenset(_path_of(uri).resolve() for uri in uris)


def delta_tables(spark: SparkSession, lake: Path) -> list[DeltaTableFiles]:
    """Every Delta table under ``lake`` (a use case's folder), with its current files."""
    return [
        DeltaTableFiles(root=root, name=root.relative_to(lake).as_posix(), current=current_files(spark, root))
        for root in table_roots(lake)
    ]
