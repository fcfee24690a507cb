"""Record-level checks of one batch of landing records: accepted rows or quarantine with a reason.

:func:`validate_records` is the one pure function both the batch and the
streaming ingestion run (inside ``foreachBatch``); it only builds column
expressions, a window and a join, so it works on any DataFrame.

Input, by the source's format (as produced by :mod:`common.ingest.readers`):

* ``json``: ``value`` (one line of text);
* ``csv``: one string column per declared column, plus ``_corrupt_record``
  (the line, when it does not split into the declared fields);
* ``parquet``: the declared columns (any type);
* ``kafka``: ``value`` (the message value as text; an Avro value as the JSON line of its
  record, or, when it does not decode, text that is no JSON: ``malformed Avro``), checked like a JSON line; with
  ``event_time_from: kafka_timestamp`` the ``event_time`` column is the message's
  timestamp (``_file_modification_time``), not a field of the value;

plus, optionally, ``_source_file``, ``_file_modification_time`` and ``_row_id``
(a unique long per record, in file order; added with ``monotonically_increasing_id``
when absent, so pass it on a persisted batch to pin it).

Rules, checked in this order; a record gets the reason of the **first** failed
check only (one reason per record, so counts by reason add up):

1. the line is a JSON object (``malformed JSON``; single quotes are refused) or
   a CSV row with the declared number of fields (``malformed CSV record``);
2. every required column has a value (``missing required column <c>``); an
   empty or blank string counts as no value, for JSON and CSV alike. Blank means
   only whitespace: spaces, tabs, newlines and Unicode spaces (no-break space);
3. every value converts to its declared type (``column <c>: <value> is not a
   <type>``), with ``try_cast``. Dates must look like ``YYYY-MM-DD`` and
   timestamps like ISO-8601 (``2026-01-01T10:00:00Z``, offset optional: without
   one the session time zone applies), so Spark's lenient forms (``yesterday``,
   ``2026``) are refused. Numbers must be exact: ``1.0`` is not an int. A double
   is a decimal number of at most 64 characters (``-1.5``, ``2e-3``) with a finite
   value: ``"NaN"``, ``"Infinity"``, ``1e400`` and endless digit strings are refused,
   quoted or not. A string column takes text only: in JSON, a number, boolean,
   array or object there (``"customer_id": 12345``) is refused rather than turned
   into text (quote it upstream); in Parquet, a column of another type likewise;
3b. the ``event_time`` lies in the source's ``event_time_range`` (``column <c>:
   <value> is not a plausible event time``): not before ``not_before`` (default
   2000-01-01) and at most ``max_future`` (default 1 day) after the ingestion's
   clock, so placeholder dates (0001-01-01, 1900-01-01, 9999-12-31) never reach bronze;
4. every value of a column with ``allowed`` is one of them (``column <c>: value
   <v> not in allowed values``);
5. the record is not a duplicate (``duplicate <id>``): its key is already in
   ``existing_keys`` (bronze; the writer passes the rows no older than the
   batch's oldest event minus the watermark) or an earlier record of the batch has it. The key
   is ``id`` for ``kind: events`` and ``(id, event_time)`` for ``kind: table``
   (a table keeps every version of an entity; only a replay of the same
   version is a duplicate). "Earlier" means an older file (modification time,
   then path), then the position in the file; for Kafka, an older message
   (timestamp), then its partition and offset (``_origin_partition``,
   ``_origin_offset``: the offset orders one partition, where a replay of
   the same key lands). Only records that pass 1–4 take
   part, so a broken record never hides a good one.

Keys that are not declared columns are ignored (they are not in bronze). Values
of PII columns never appear in a reason: they show as ``<redacted>``.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from common.ingest.redaction import (
    REDACTED,
    UNPARSABLE_CSV_NOTE,
    pii_columns,
    record_as_json,
    redact_json_text,
)
from common.spec.base import duration_seconds
from common.spec.sources import Source

CORRUPT = "_corrupt_record"
SOURCE_FILE = "_source_file"
FILE_TIME = "_file_modification_time"
RAW = "_raw"
REASON = "_reason"
CHECK = "_check"
ROW_ID = "_row_id"
ORIGIN_PARTITION = "_origin_partition"
ORIGIN_OFFSET = "_origin_offset"
ORDER_COLUMNS = (FILE_TIME, ORIGIN_PARTITION, ORIGIN_OFFSET)
KAFKA_TIME_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"  # ISO-8601 with the offset: what the timestamp check takes

MALFORMED_JSON = "malformed JSON"
MALFORMED_AVRO = "malformed Avro"  # a Kafka value that does not decode with the source's Avro schema
MALFORMED_CSV = "malformed CSV record"
SHOWN_VALUE_CHARS = 200

BLANK = r"^[\s\p{Z}\x{FEFF}]*$"  # Java regex: ASCII whitespace and every Unicode space
DECIMAL = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"
MAX_NUMBER_CHARS = 64
NOT_TEXT = "\u0000\u0001loom:not-text\u0001"
ISO_DATE = r"^\s*\d{4}-\d{2}-\d{2}\s*$"
ISO_TIMESTAMP = r"^\s*\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)?\s*$"
JSON_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT, "allowSingleQuotes": "false"}

FIRST_REASON = "_first_reason"  # rules 1-4: the reason of the first failed check (null: passed)
FIRST_CHECK = "_first_check"  # and that check without the offending value, for counting

_PARSED = "_parsed"
_MICROS = "decimal(20,0)"  # microseconds since the epoch, as a decimal (see _implausible_time)
_KNOWN = "_known"
_FIRST_REASON = FIRST_REASON
_FIRST_CHECK = FIRST_CHECK


def string_schema(source: Source, *, corrupt_column: bool = False) -> StructType:
    """Every declared column as a string (how CSV and JSON are read before checks)."""
    fields = [StructField(name, StringType()) for name in source.columns]
    if corrupt_column:
        fields.append(StructField(CORRUPT, StringType()))
    return StructType(fields)


def typed_schema(source: Source) -> StructType:
    """The declared columns with their declared types."""
    return StructType.fromDDL(", ".join(f"{name} {column.type}" for name, column in source.columns.items()))


def dedup_columns(source: Source) -> list[str]:
    """Columns whose values identify a record for duplicate detection (empty: no check)."""
    if source.id is None:
        return []
    if source.kind == "table" and source.event_time is not None and source.event_time != source.id:
        return [source.id, source.event_time]
    return [source.id]


def duplicate_reason(source: Source) -> str:
    keys = dedup_columns(source)
    return f"duplicate {keys[0]}" if len(keys) == 1 else f"duplicate ({', '.join(keys)})"


def validate_records(
    df: DataFrame, source: Source, *, existing_keys: DataFrame | None = None
) -> tuple[DataFrame, DataFrame]:
    """Split a batch of landing records into ``(accepted, quarantined)``.

    ``accepted``: the declared columns with their declared types, then
    ``_source_file``. ``quarantined``: ``raw`` (redacted for PII sources),
    ``reason``, ``source_file``. Every input record is in exactly one of them.
    ``existing_keys`` holds the :func:`dedup_columns` of records already in bronze.
    """
    return split_classified(classify(df, source, existing_keys=existing_keys), source)


def split_classified(classified: DataFrame, source: Source) -> tuple[DataFrame, DataFrame]:
    """The accepted and quarantined rows of :func:`classify`'s output."""
    accepted = classified.where(F.col(REASON).isNull()).select(*source.columns, SOURCE_FILE)
    quarantined = classified.where(F.col(REASON).isNotNull()).select(
        F.col(RAW).alias("raw"), F.col(REASON).alias("reason"), F.col(SOURCE_FILE).alias("source_file")
    )
    return accepted, quarantined


def classify(df: DataFrame, source: Source, *, existing_keys: DataFrame | None = None) -> DataFrame:
    """One row per input record: typed columns, ``_source_file``, ``_raw``, ``_reason``, ``_check``.

    ``_reason`` is null for an accepted record; ``_check`` is the reason without
    the offending value (``column amount: not a double``), for counting. It is
    :func:`check_records` (rules 1-4) then :func:`mark_duplicates` (rule 5): a
    caller that persists the first half parses each record once.
    """
    return mark_duplicates(check_records(df, source), source, existing_keys=existing_keys)


def check_records(df: DataFrame, source: Source) -> DataFrame:
    """Rules 1-4 in one projection: per record its typed values, first failed check and row id.

    Internal columns (``_t_<column>``, the first reason and check) feed :func:`mark_duplicates`.
    """
    if ROW_ID not in df.columns:
        df = df.withColumn(ROW_ID, F.monotonically_increasing_id())
    if SOURCE_FILE not in df.columns:
        df = df.withColumn(SOURCE_FILE, F.lit(None).cast("string"))
    df, fields, malformed, malformed_reason, raw = _normalize(df, source)

    values = {name: _present(field) for name, field in fields.items()}
    df = df.select(
        "*",
        *[value.alias(_value(name)) for name, value in values.items()],
        raw.alias(RAW),
    )
    df = df.select(
        "*",
        *[_parse(F.col(_value(name)), column.type).alias(_typed(name)) for name, column in source.columns.items()],
    )

    checks: list[tuple[Column, Column, str]] = [(malformed, F.lit(malformed_reason), malformed_reason)]
    pii = set(pii_columns(source))
    for name, column in source.columns.items():
        if column.required:
            text = f"missing required column {name}"
            checks.append((F.col(_value(name)).isNull(), F.lit(text), text))
    for name, column in source.columns.items():
        shown = _shown(F.col(_value(name)), name in pii)
        failed = F.col(_value(name)).isNotNull() & F.col(_typed(name)).isNull()
        message = F.concat(F.lit(f"column {name}: "), shown, F.lit(f" is not a {column.type}"))
        checks.append((failed, message, f"column {name}: not a {column.type}"))
    if source.event_time is not None:
        checks.append(_implausible_time(source, source.event_time in pii))
    for name, column in source.columns.items():
        if column.allowed is not None:
            shown = _shown(F.col(_value(name)), name in pii)
            allowed = [F.lit(value).try_cast(column.type) for value in column.allowed]
            typed = F.col(_typed(name))
            failed = typed.isNotNull() & ~F.coalesce(typed.isin(*allowed), F.lit(False))
            message = F.concat(F.lit(f"column {name}: value "), shown, F.lit(" not in allowed values"))
            checks.append((failed, message, f"column {name}: not in allowed values"))
    order = [name for name in ORDER_COLUMNS if name in df.columns]
    return df.select(
        *[_typed(name) for name in source.columns],
        SOURCE_FILE,
        *order,
        ROW_ID,
        RAW,
        F.coalesce(*[F.when(cond, message) for cond, message, _ in checks]).alias(_FIRST_REASON),
        F.coalesce(*[F.when(cond, F.lit(check)) for cond, _, check in checks]).alias(_FIRST_CHECK),
    )


def oldest_candidate_time(source: Source) -> Column | None:
    """Aggregate over :func:`check_records`'s output: the oldest event time among the records that passed
    rules 1-4 (the ones the duplicate check probes); None for a source without an event time."""
    if source.event_time is None:
        return None
    return F.min(F.when(F.col(_FIRST_REASON).isNull(), F.col(_typed(source.event_time))))


def named_checked(checked: DataFrame, source: Source) -> DataFrame:
    """:func:`check_records`'s output with the typed values under their declared names, for a batch classified
    on the driver (:mod:`common.ingest.driver_batch`): the declared columns, ``_source_file``, the order columns
    present, ``_row_id``, ``_raw``, :data:`FIRST_REASON` and :data:`FIRST_CHECK`."""
    order = [name for name in ORDER_COLUMNS if name in checked.columns]
    return checked.select(
        *[F.col(_typed(name)).alias(name) for name in source.columns],
        SOURCE_FILE,
        *order,
        ROW_ID,
        RAW,
        FIRST_REASON,
        FIRST_CHECK,
    )


def mark_duplicates(checked: DataFrame, source: Source, *, existing_keys: DataFrame | None = None) -> DataFrame:
    """Rule 5 on :func:`check_records`'s output, then the shape of :func:`classify`."""
    keys = dedup_columns(source)
    duplicate = F.lit(False)
    if keys:
        checked, duplicate = _duplicates(checked, keys, existing_keys)
    reason = duplicate_reason(source) if keys else ""
    return checked.select(
        *[F.col(_typed(name)).alias(name) for name in source.columns],
        SOURCE_FILE,
        RAW,
        F.coalesce(F.col(_FIRST_REASON), F.when(duplicate, F.lit(reason))).alias(REASON),
        F.coalesce(F.col(_FIRST_CHECK), F.when(duplicate, F.lit(reason))).alias(CHECK),
    )


def _value(name: str) -> str:
    return f"_v_{name}"


def _typed(name: str) -> str:
    # Typed values get their declared names only at the end: CSV input already uses them.
    return f"_t_{name}"


def _normalize(df: DataFrame, source: Source) -> tuple[DataFrame, dict[str, Column], Column, str, Column]:
    """Per format: the string value of each column, whether the record is malformed, its raw text."""
    pii = pii_columns(source)
    names = list(source.columns)
    if source.format in ("json", "kafka"):
        df = df.withColumn(_PARSED, F.from_json("value", string_schema(source, corrupt_column=True), JSON_OPTIONS))
        fields = {name: F.col(_PARSED)[name] for name in names}
        malformed = F.col(_PARSED).isNull() | F.col(_PARSED)[CORRUPT].isNotNull()
        # An object from_json reads but the strict parser refuses has a key twice ({"id": "a", "id": 7}):
        # which value counts is ambiguous (and its types could not be checked below), so it is malformed.
        document = F.try_parse_json("value")
        malformed = malformed | document.isNull()
        for name in names:
            if source.columns[name].type == "string":
                # from_json turns 12345, true, [..] and {..} into text; the JSON type tells them from "12345"
                kind = F.schema_of_variant(F.try_variant_get(document, f"$.{name}", "variant"))
                fields[name] = F.when(kind.isin("STRING", "VOID") | kind.isNull(), fields[name]).otherwise(
                    _not_text(fields[name])
                )
        if source.event_time_from_kafka and FILE_TIME in df.columns:
            fields[source.event_time] = F.date_format(FILE_TIME, KAFKA_TIME_FORMAT)
        raw = redact_json_text(F.col("value"), pii) if pii else F.col("value")
        avro = source.kafka is not None and source.kafka.value_format == "avro"  # decoded by the reader
        return df, fields, malformed, MALFORMED_AVRO if avro else MALFORMED_JSON, raw
    if source.format == "csv":
        fields = {name: F.col(name) for name in names}
        corrupt = F.col(CORRUPT) if CORRUPT in df.columns else F.lit(None).cast("string")
        as_json = record_as_json(fields, pii)
        unparsable = F.lit(UNPARSABLE_CSV_NOTE) if pii else corrupt
        raw = F.when(corrupt.isNotNull(), unparsable).otherwise(as_json)
        return df, fields, corrupt.isNotNull(), MALFORMED_CSV, raw
    fields = {name: F.col(name).cast("string") for name in names}
    for name in names:  # a string column read as another type (a number, a struct) is no text either
        if source.columns[name].type == "string" and name in df.columns and df.schema[name].dataType != StringType():
            fields[name] = _not_text(fields[name])
    raw = record_as_json({name: F.col(name).cast("string") for name in names}, pii)
    return df, fields, F.lit(False), "malformed record", raw


def _present(field: Column) -> Column:
    """``field``, or null when it is empty or blank (whitespace only, Unicode spaces included)."""
    return F.when(~field.rlike(BLANK), field)


def _not_text(value: Column) -> Column:
    """A value that is no text (a JSON number, boolean, array or object) marked so that it fails as a string."""
    return F.concat(F.lit(NOT_TEXT), value)


def _parse(value: Column, kind: str) -> Column:
    """``value`` (a string) as ``kind``, or null when it does not convert."""
    if kind == "string":
        return F.when(~value.startswith(NOT_TEXT), value)
    if kind in ("double", "float"):
        number = F.when(value.rlike(DECIMAL) & (F.length(value) <= MAX_NUMBER_CHARS), value.try_cast(kind))
        return F.when(~F.isnan(number) & (F.abs(number) != F.lit(float("inf"))), number)
    if kind == "timestamp":
        return F.when(value.rlike(ISO_TIMESTAMP), value.try_cast("timestamp"))
    if kind == "date":
        return F.when(value.rlike(ISO_DATE), value.try_cast("date"))
    return value.try_cast(kind)


def _implausible_time(source: Source, is_pii: bool) -> tuple[Column, Column, str]:
    """The check of ``event_time`` against the source's plausible range (see the module docstring)."""
    name = source.event_time
    span = source.event_time_range
    typed = F.col(_typed(name))
    earliest = F.to_timestamp(F.lit(span.not_before.isoformat()))
    # Ahead of the latest plausible time: the difference in microseconds, as a decimal, is positive. Spark
    # folds the clock into a literal each batch, and generated code inlines a timestamp or long literal, so
    # every micro-batch compiled its projection anew (two Janino compilations, ~0.6 s of a small batch on 2
    # cores). A decimal literal is passed to the generated code as an object instead, and the code is reused
    # from batch to batch. (A difference, not ``cast(t) > literal``: Spark unwraps that cast to a long again.)
    latest_us = F.unix_micros(F.current_timestamp()) + F.lit(int(duration_seconds(span.max_future) * 1_000_000))
    late = (F.unix_micros(typed).cast(_MICROS) - latest_us.cast(_MICROS)) > 0
    failed = typed.isNotNull() & ((typed < earliest) | late)
    shown = _shown(F.col(_value(name)), is_pii)
    bounds = f"before {span.not_before.isoformat()} or more than {span.max_future} ahead"
    message = F.concat(F.lit(f"column {name}: "), shown, F.lit(f" is not a plausible event time ({bounds})"))
    return failed, message, f"column {name}: not a plausible event time"


def _shown(value: Column, is_pii: bool) -> Column:
    """How a value appears in a reason: PII redacted, long values cut, the no-text mark left out."""
    if is_pii:
        return F.lit(REDACTED)
    value = F.when(value.startswith(NOT_TEXT), F.substring(value, len(NOT_TEXT) + 1, 1 << 30)).otherwise(value)
    return F.when(
        F.length(value) > SHOWN_VALUE_CHARS, F.concat(F.substring(value, 1, SHOWN_VALUE_CHARS), F.lit("..."))
    ).otherwise(value)


def _duplicates(df: DataFrame, keys: list[str], existing_keys: DataFrame | None) -> tuple[DataFrame, Column]:
    """Mark records whose key is in ``existing_keys`` or on an earlier record of the batch.

    The window and the bronze lookup run on a narrow projection (key, order, row
    id); the wide records only meet the row ids of the duplicates (usually few),
    broadcast, so the batch itself is never shuffled. Bronze is probed against the
    batch's keys broadcast (a scan of its key columns, no shuffle of bronze).
    """
    typed_keys = [_typed(key) for key in keys]
    candidate = F.col(_FIRST_REASON).isNull()
    for key in typed_keys:
        candidate = candidate & F.col(key).isNotNull()
    order = [name for name in ORDER_COLUMNS if name in df.columns]
    order += [SOURCE_FILE, ROW_ID]
    narrow = df.where(candidate).select(*typed_keys, *order)
    position = F.row_number().over(Window.partitionBy(*typed_keys).orderBy(*order))
    duplicates = narrow.withColumn("_position", position).where(F.col("_position") > 1).select(ROW_ID)
    if existing_keys is not None:
        existing = existing_keys.select(*[F.col(key).alias(typed) for key, typed in zip(keys, typed_keys, strict=True)])
        known = existing.join(F.broadcast(narrow.select(*typed_keys, ROW_ID)), typed_keys, "inner").select(ROW_ID)
        duplicates = duplicates.union(known).distinct()
    df = df.join(F.broadcast(duplicates.withColumn(_KNOWN, F.lit(True))), ROW_ID, "left")
    return df, F.col(_KNOWN).isNotNull()
