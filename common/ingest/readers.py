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
  fails the batch;
* ``kafka``: Spark's own Kafka source on the source's topics (:func:`read_kafka`): the
  message value as text in ``value`` (validated like a JSON line; an Avro value is decoded with
  the source's schema and rendered as that JSON line, :func:`avro_values`), the origin
  ``kafka:<topic>/<partition>/<offset>`` in place of the file and the message's
  timestamp in place of the file's time, plus the partition and offset, which order
  the records of one partition for the duplicate check.
"""

from __future__ import annotations

import io
import json
import os
from functools import reduce
from pathlib import Path

from pyspark.sql import Column, DataFrame, DataFrameReader, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import DataStreamReader

from common.errors import ConfigError
from common.ingest.redaction import pii_columns
from common.ingest.validation import (
    CORRUPT,
    FILE_TIME,
    KAFKA_TIME_FORMAT,
    ORIGIN_OFFSET,
    ORIGIN_PARTITION,
    SOURCE_FILE,
    string_schema,
    typed_schema,
)
from common.lake.paths import is_local
from common.runtime.kafka_server import BOOTSTRAP_ENV, running_local_broker, spark_options
from common.settings import loom_home
from common.spec.base import duration_seconds
from common.spec.sources import KafkaSettings, Source

# A request to the broker never waits longer than this; a shorter broker_timeout shortens it.
KAFKA_REQUEST_TIMEOUT_MS = 30_000


def kafka_timeouts(settings: KafkaSettings) -> dict[str, str]:
    """The Kafka source's options that make a stream wait ``broker_timeout`` for an unreachable broker, then fail.

    One offset look-up (Kafka's admin client retries inside it until its API timeout) and one fetch of a batch's
    records both wait that long; the job then stops with common.ingest.broker_health's message. A shorter
    outage is waited out (docs/ingestion.md#events-from-kafka).
    """
    wait_ms = duration_seconds(settings.broker_timeout) * 1000
    return {
        "kafka.request.timeout.ms": str(min(KAFKA_REQUEST_TIMEOUT_MS, wait_ms)),
        "kafka.default.api.timeout.ms": str(wait_ms),
        "fetchOffset.numRetries": "1",
        "kafkaConsumer.pollTimeoutMs": str(wait_ms),
    }


def read_landing(reader: DataFrameReader | DataStreamReader, source: Source, folder: str) -> DataFrame:
    """The files of ``folder`` in the raw shape of ``source.format``, with each record's file and its time.

    ``reader`` decides batch (``spark.read``) or stream (``spark.readStream``,
    with its options, e.g. ``maxFilesPerTrigger``).
    """
    if source.format == "kafka":
        return read_kafka(reader, source)
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
    """A streaming DataFrame over the files of ``folder`` (created if local and missing), or over the topics of a
    Kafka source (``max_files_per_trigger`` does not apply to it: its ``kafka.max_offsets_per_trigger`` does)."""
    if source.format == "kafka":
        return read_kafka(spark.readStream, source)
    if is_local(folder):
        # The file source refuses a folder that does not exist yet; an empty one is fine.
        Path(folder).mkdir(parents=True, exist_ok=True)
    reader = spark.readStream
    if max_files_per_trigger is not None:
        reader = reader.option("maxFilesPerTrigger", str(max_files_per_trigger))
    return read_landing(reader, source, folder)


def kafka_bootstrap_of(source: Source) -> str:
    """The bootstrap servers of a Kafka source: the environment variable its metadata names
    (``LOOM_KAFKA_BOOTSTRAP`` by default), else the broker of ``loom kafka start`` for the default name."""
    name = source.kafka.bootstrap_env
    configured = os.environ.get(name, "").strip()
    if configured:
        return configured
    if name == BOOTSTRAP_ENV:
        local = running_local_broker(loom_home())
        if local:
            return local
    topics = ", ".join(source.kafka.topic_list)
    raise ConfigError(
        f"the Kafka source of topic(s) {topics} needs the bootstrap servers in ${name}, which is not set"
        + (" (and no broker of `loom kafka start` is running)" if name == BOOTSTRAP_ENV else "")
        + f". Fix: export {name}=host:port[,host:port]"
        + (", or run `loom kafka start`" if name == BOOTSTRAP_ENV else "")
    )


def read_kafka(reader: DataFrameReader | DataStreamReader, source: Source) -> DataFrame:
    """The messages of a Kafka source's topics in the raw shape of a JSON line, with their origin.

    A stream starts a new checkpoint at ``starting_offsets`` and then resumes from the offsets its checkpoint
    holds (a restart reads each message again only if its batch did not commit); at most
    ``max_offsets_per_trigger`` messages a micro-batch. A batch read (the privacy audit) takes every message
    the topics hold now. Messages deleted by retention before they were read fail the query
    (``failOnDataLoss``): silently skipping events is worse than stopping.
    """
    settings = source.kafka
    value = avro_values(F.col("value"), source) if settings.value_format == "avro" else F.col("value").cast("string")
    options = {**spark_options(kafka_bootstrap_of(source)), **kafka_timeouts(settings)}
    options["subscribe"] = ",".join(settings.topic_list)
    options["failOnDataLoss"] = "true"
    if isinstance(reader, DataStreamReader):
        options["startingOffsets"] = settings.starting_offsets
        if settings.max_offsets_per_trigger is not None:
            options["maxOffsetsPerTrigger"] = str(settings.max_offsets_per_trigger)
    else:
        options["startingOffsets"], options["endingOffsets"] = "earliest", "latest"
    frame = reader.format("kafka").options(**options).load()
    origin = F.concat(F.lit("kafka:"), F.col("topic"), F.lit("/"), F.col("partition"), F.lit("/"), F.col("offset"))
    return frame.select(
        value.alias("value"),
        origin.alias(SOURCE_FILE),
        F.col("timestamp").alias(FILE_TIME),
        F.col("partition").alias(ORIGIN_PARTITION),
        F.col("offset").alias(ORIGIN_OFFSET),
    )


# What a malformed Avro value becomes: text that is no JSON (so validation quarantines it as malformed Avro),
# holding the bytes for whoever repairs it, unless the source has PII columns: its bytes then hold PII that
# cannot be told apart, and the origin (topic, partition, offset) says where to find them.
MALFORMED_AVRO_PREFIX = "malformed Avro value, base64: "
MALFORMED_AVRO_PII_NOTE = "<redacted: malformed Avro value of a source with PII columns; see source_file>"
AVRO_OPTIONS = {"mode": "PERMISSIVE", "datetimeRebaseMode": "CORRECTED"}  # fastavro writes proleptic Gregorian
JSON_WRITE_OPTIONS = {"timestampFormat": KAFKA_TIME_FORMAT, "timestampNTZFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSS"}


def avro_schema_text(source: Source) -> str:
    """The text of a Kafka source's Avro schema file (checked when the metadata loaded; read again here)."""
    path = source.kafka.avro_schema_file
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        topics = ", ".join(source.kafka.topic_list)
        raise ConfigError(
            f"kafka.avro_schema of the source of topic(s) {topics}: cannot read {path} ({err.strerror or err}). "
            "Fix: restore the file, or name the .avsc file the producer writes with"
        ) from None


def _null_record(schema: str) -> bytes | None:
    """The encoding of a record whose fields are all null, or None when the schema does not allow one."""
    from fastavro import parse_schema, schemaless_writer

    buffer = io.BytesIO()
    try:
        schemaless_writer(buffer, parse_schema(json.loads(schema)), {})
    except (ValueError, TypeError):  # a field that cannot be null
        return None
    return buffer.getvalue()


def avro_values(value: Column, source: Source) -> Column:
    """Each Avro value (binary encoding, the source's schema) as the JSON line of its record, which validation
    then checks like any JSON value; a value that does not decode as text that is no JSON.

    ``from_avro`` in PERMISSIVE mode gives a record of nulls for bytes that do not decode (a batch never
    fails on one message). A record of nulls is taken as decoded only when the value is exactly the encoding
    of such a record. Timestamps keep their microseconds (``KAFKA_TIME_FORMAT``). Avro values have no
    framing: bytes after a complete record are not seen (docs/ingestion.md#avro-values).
    """
    from pyspark.sql.avro.functions import from_avro

    schema = avro_schema_text(source)
    try:
        decoded = from_avro(value, schema, AVRO_OPTIONS)
    except TypeError as err:  # PySpark's word for a JVM class that is not there: spark-avro was not fetched
        raise ConfigError(
            "Spark's Avro functions (spark-avro) are not on this session's classpath, so the Avro values of topic(s) "
            f"{', '.join(source.kafka.topic_list)} cannot be decoded ({err}). Fix: run `make setup` (it fetches "
            "spark-avro into .cache/kafka/connector) and do not set LOOM_SPARK_KAFKA=0"
        ) from None
    names = [field["name"] for field in json.loads(schema)["fields"]]
    any_field = reduce(lambda a, b: a | b, [decoded[name].isNotNull() for name in names], F.lit(False))
    null_record = _null_record(schema)
    if null_record is not None:
        any_field = any_field | F.coalesce(value == F.lit(null_record), F.lit(False))
    if pii_columns(source):
        malformed = F.lit(MALFORMED_AVRO_PII_NOTE)
    else:
        malformed = F.concat(F.lit(MALFORMED_AVRO_PREFIX), F.coalesce(F.base64(value), F.lit("")))
    return F.when(any_field, F.to_json(decoded, JSON_WRITE_OPTIONS)).otherwise(malformed)
