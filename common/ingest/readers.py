"""Readers of a landing folder, one per file format, as a stream or as a batch.

Batch and stream ingestion use the same file stream source; only the trigger
differs (``availableNow`` for batch). The privacy audit and report read the
same files with a batch reader (:mod:`common.privacy_lifecycle.landing`). Every reader
returns the raw shape that :func:`common.ingest.validation.validate_records`
expects, plus the file each record came from (``_source_file``) and that
file's modification time:

* ``json``: JSON lines read as text, one ``value`` per line; blank lines are
  skipped (they are not records);
* ``csv``: a header row is required and must name the declared columns in the
  declared order (``enforceSchema=false``: a file whose header differs fails the
  batch instead of loading values into the wrong columns); every column is read
  as a string; a row with the wrong number of fields keeps its line in
  ``_corrupt_record``;
* ``parquet``: read with the declared types; a file whose physical types differ
  fails the batch.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, DataFrameReader, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import DataStreamReader

from common.ingest.validation import CORRUPT, FILE_TIME, SOURCE_FILE, string_schema, typed_schema
from common.lake.paths import is_local
from common.spec.sources import Source


def read_landing(reader: DataFrameReader | DataStreamReader, source: Source, folder: str) -> DataFrame:
    """The files of ``folder`` in the raw shape of ``source.format``, with each record's file and its time.

    ``reader`` decides batch (``spark.read``) or stream (``spark.readStream``,
    with its options, e.g. ``maxFilesPerTrigger``).
    """
    if source.format == "json":
        frame = reader.format("text").load(folder)
        frame = frame.where(F.trim("value") != "")
    elif source.format == "csv":
        frame = (
            reader.format("csv")
            .schema(string_schema(source, corrupt_column=True))
            .option("header", "true")
            .option("enforceSchema", "false")
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .load(folder)
        )
    else:
        frame = reader.format("parquet").schema(typed_schema(source)).load(folder)
    return frame.select(
        "*",
        F.col("_metadata.file_path").alias(SOURCE_FILE),
        F.col("_metadata.file_modification_time").alias(FILE_TIME),
    )


def read_landing_stream(
    spark: SparkSession, source: Source, folder: str, *, max_files_per_trigger: int | None = None
) -> DataFrame:
    """A streaming DataFrame over the files of ``folder`` (created if local and missing)."""
    if is_local(folder):
        # The file source refuses a folder that does not exist yet; an empty one is fine.
        Path(folder).mkdir(parents=True, exist_ok=True)
    reader = spark.readStream
    if max_files_per_trigger is not None:
        reader = reader.option("maxFilesPerTrigger", str(max_files_per_trigger))
    return read_landing(reader, source, folder)
