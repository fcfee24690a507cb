"""The ``foreachBatch`` step of ingestion: validate, protect PII, write bronze and quarantine once.

Exactly-once: both appends record a Delta transaction (:func:`common.lake.append.append_once`):
the app id is the streaming query's id, which the checkpoint keeps across restarts, so a new
checkpoint never collides with an old one, and the version is the batch id. A write whose
version the table has already committed for that app id is skipped, so a retried micro-batch
adds nothing. Quarantine is written before bronze, and the duplicate check reads the
bronze version of the batch's start: a batch retried after quarantine committed
but before bronze did classifies every record as before.

The batch is counted before anything is written: if read != accepted +
quarantined, it raises :class:`DataError` and writes nothing. The checks are
:func:`~common.ingest.validation.validate_records`, called as its parts
(``check_records``, ``mark_duplicates``, ``split_classified``): the files are
read and parsed once, into a cache that the duplicate check reads, and the
classified batch is cached once for the counts and both writes. That is the path of a large batch
(:meth:`BatchWriter.write_with_spark`); a small one is checked in one Spark job and classified and written
from the driver (:mod:`common.ingest.driver_batch`), with the same result.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import UTC, datetime, timedelta

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from common.errors import DataError, LoomError, PrivacyError
from common.ingest import driver_batch
from common.ingest.report import IngestReport
from common.ingest.validation import (
    CHECK,
    ROW_ID,
    SOURCE_FILE,
    check_records,
    dedup_columns,
    mark_duplicates,
    named_checked,
    oldest_candidate_time,
    split_classified,
    typed_schema,
)
from common.lake.append import append_once, append_rows_once
from common.lake.delta import local_folder, table_exists
from common.lake.paths import IngestLocations
from common.lake.snapshot_read import current_arrow, read_current
from common.runtime.log import Stopwatch
from common.spec.base import duration_seconds
from common.spec.sources import Source

log = logging.getLogger(__name__)

INGESTED_AT = "_ingested_at"
QUARANTINE_SCHEMA = StructType(
    [
        StructField("raw", StringType()),
        StructField("reason", StringType()),
        StructField("source_file", StringType()),
        StructField("ingested_at", TimestampType()),
    ]
)
BIND_TIMEOUT_S = 120.0


def protect(df: DataFrame, source: Source, source_name: str) -> DataFrame:
    """Apply the source's PII policies (drop, pseudonymize, encrypt, generalize) before bronze."""
    from common.privacy import apply_policies  # imported late: the privacy module loads keys and crypto

    return apply_policies(df, source, source_name)


def check_dedup_columns(source: Source, source_name: str) -> None:
    """Refuse a PII key column: duplicates are found by comparing it with bronze, where it is protected."""
    for name in dedup_columns(source):
        if source.columns[name].is_pii:
            raise PrivacyError(
                f"column {name!r} identifies records for duplicate detection, so it cannot be PII",
                path=f"sources.{source_name}.columns.{name}.pii",
                value=source.columns[name].pii,
                fix="use a record id that is not personal data, or remove 'id' from the source",
            )


def ensure_tables(spark: SparkSession, source: Source, source_name: str, locations: IngestLocations) -> None:
    """Create empty bronze and quarantine tables, so readers find them before the first file arrives.

    :func:`~common.lake.delta.table_exists` (a listing of the log), not ``DeltaTable.isDeltaTable``: a Spark job
    per call, which every ``loom stream`` start paid six times."""
    if not table_exists(spark, locations.quarantine):
        spark.createDataFrame([], QUARANTINE_SCHEMA).write.format("delta").mode("append").save(locations.quarantine)
    if not table_exists(spark, locations.bronze):
        empty = spark.createDataFrame([], typed_schema(source)).withColumn(SOURCE_FILE, F.lit(None).cast("string"))
        bronze = protect(empty, source, source_name).withColumn(INGESTED_AT, F.lit(None).cast("timestamp"))
        bronze.write.format("delta").mode("append").save(locations.bronze)


class BatchWriter:
    """The ``foreachBatch`` function of one source's ingestion query.

    Call :meth:`bind` with the query's id right after ``start()``; batches wait
    for it (the first one can start before ``start()`` returns).
    """

    def __init__(self, source: Source, source_name: str, locations: IngestLocations, report: IngestReport) -> None:
        self.source = source
        self.source_name = source_name
        self.locations = locations
        self.report = report
        self._app_id: str | None = None
        self._bound = threading.Event()

    def bind(self, query_id: str) -> None:
        self._app_id = f"loom-ingest-{query_id}"
        self._bound.set()

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        try:
            self.write(batch, batch_id)
        except LoomError as error:
            # Spark wraps whatever foreachBatch raises; keep the original for the job's message.
            self.report.failure = error
            raise
        except Exception as error:
            translated = self._user_error(error)
            if translated is None:
                raise
            self.report.failure = translated
            raise translated from error

    def _user_error(self, error: Exception) -> LoomError | None:
        """A DataError for failures caused by a landing file rather than by Loom."""
        text = str(error)
        if "CSV header does not conform to the schema" in text:
            header = re.search(r"Header: ([^\n]*)", text)
            return DataError(
                f"source {self.source_name!r}: a CSV file in {self.locations.folder} has the header "
                f"{header.group(1).strip() if header else '(unknown)'!r}, but the declared columns are "
                f"{', '.join(self.source.columns)!r}; nothing of this batch was written. "
                "Fix: write the header row with the declared columns in the declared order, "
                "or move the file out of the landing folder"
            )
        return None

    def write(self, batch: DataFrame, batch_id: int) -> None:
        """Validate one micro-batch and append it to quarantine, then bronze.

        A small batch is checked in one Spark job and classified on the driver (:mod:`common.ingest.driver_batch`);
        a large one, or one that the driver cannot write, in Spark (:meth:`write_with_spark`). Both give the same
        rows, reasons and transactions."""
        if not self._bound.wait(BIND_TIMEOUT_S) or self._app_id is None:
            raise RuntimeError("BatchWriter.bind() was not called after the query started")
        ingested_at = datetime.now(UTC)
        if self._driver_capable():
            size = driver_batch.input_bytes(batch)
            if size is None or size <= driver_batch.DRIVER_BYTES:
                clock = Stopwatch()
                rows = driver_batch.collect_rows(self._driver_frame(batch), size)
                clock.lap("read+check")
                if rows is not None:
                    self._write_rows(batch.sparkSession, rows, batch_id, ingested_at, clock)
                    return
        self.write_with_spark(batch, batch_id, ingested_at)

    def _driver_capable(self) -> bool:
        """Whether this source's batches can be classified and written from the driver: local tables, and no
        k-anonymity policy (it is decided over a batch's accepted rows, in Spark)."""
        from common.spec.privacy import Aggregate

        if local_folder(self.locations.bronze) is None or local_folder(self.locations.quarantine) is None:
            return False
        return not any(isinstance(column.policy, Aggregate) for column in self.source.columns.values())

    def _driver_frame(self, batch: DataFrame) -> DataFrame:
        """Rules 1-4 and the PII policies in one projection, for :func:`driver_batch.collect_rows`.

        Every record's columns are protected here, the quarantined ones too (their values are then dropped:
        quarantine keeps only the redacted raw text), so bronze's rows never exist unprotected on the driver."""
        checked = named_checked(
            check_records(batch.withColumn(ROW_ID, F.monotonically_increasing_id()), self.source), self.source
        )
        if self.source.event_time is not None:
            checked = checked.withColumn(driver_batch.DEDUP_TIME, F.col(self.source.event_time))
        return protect(checked, self.source, self.source_name)

    def _write_rows(self, spark: SparkSession, rows, batch_id: int, ingested_at: datetime, clock: Stopwatch) -> None:
        """The driver path of :meth:`write`, from the collected Arrow rows."""
        read = rows.num_rows
        if read == 0:
            return
        existing = None
        if dedup_columns(self.source):
            existing = self._existing_rows(spark, driver_batch.oldest_candidate(rows, self.source))
        classified = driver_batch.classify_rows(rows, self.source, existing)
        accepted_count, counts = driver_batch.counts_by_check(classified)
        clock.lap("duplicates")
        self._check_reconciled(batch_id, read, accepted_count, counts)
        bronze, quarantined = driver_batch.split_rows(classified, ingested_at, INGESTED_AT)
        self._append_rows(spark, quarantined, self.locations.quarantine, batch_id)
        clock.lap("quarantine")
        self._append_rows(spark, bronze, self.locations.bronze, batch_id)
        clock.lap("bronze")
        self._done(batch_id, read, accepted_count, counts, clock)

    def _existing_rows(self, spark: SparkSession, since: datetime | None):
        """:meth:`_existing_keys` as an Arrow table, read on the driver when bronze allows it."""
        keys = dedup_columns(self.source)
        time_column = self.source.event_time
        if since is None or time_column is None:
            rows = current_arrow(self.locations.bronze, keys)
        else:
            slack = duration_seconds(self.source.watermark) if self.source.watermark else 0
            bound = since - timedelta(seconds=slack)
            columns = keys if time_column in keys else [*keys, time_column]
            rows = current_arrow(self.locations.bronze, columns, time_column=time_column, since=bound)
        if rows is None:  # a table that needs Spark's reader
            return self._existing_keys(spark, since).toArrow()
        return rows.select(keys)

    def _append_rows(self, spark: SparkSession, rows, path: str, batch_id: int) -> None:
        if not append_rows_once(rows, path, self._app_id, batch_id):
            append_once(spark.createDataFrame(rows), path, self._app_id, batch_id)

    def _check_reconciled(self, batch_id: int, read: int, accepted_count: int, counts: dict[str, int]) -> None:
        if read != accepted_count + sum(counts.values()):
            raise DataError(
                f"source {self.source_name!r}, batch {batch_id}: read {read} records but classified "
                f"{accepted_count} accepted + {sum(counts.values())} quarantined; nothing was written. "
                "Fix: this is a bug in validation; report it with the batch's files"
            )

    def _done(self, batch_id: int, read: int, accepted_count: int, counts: dict[str, int], clock: Stopwatch) -> None:
        self.report.add_batch(read, accepted_count, counts)
        log.info(
            "ingest %s batch %d: read %d, accepted %d, quarantined %d (%s)",
            self.source_name,
            batch_id,
            read,
            accepted_count,
            read - accepted_count,
            clock,
        )

    def write_with_spark(self, batch: DataFrame, batch_id: int, ingested_at: datetime) -> None:
        """The Spark path of :meth:`write`: every step a Spark job, for batches too large for the driver."""
        spark = batch.sparkSession
        # One pass over the files: rules 1-4 in one projection, cached with the row ids it assigned, so
        # the duplicate check, the counts and both writes see the same ids and nothing is parsed twice.
        checked = check_records(batch.withColumn(ROW_ID, F.monotonically_increasing_id()), self.source)
        checked = checked.persist(StorageLevel.MEMORY_AND_DISK)
        classified: DataFrame | None = None
        clock = Stopwatch()
        try:
            oldest = oldest_candidate_time(self.source)
            stats = checked.agg(F.count(F.lit(1)), *([oldest] if oldest is not None else [])).first()
            read, since = stats[0], (stats[1] if oldest is not None else None)
            clock.lap("read+check")
            if read == 0:
                return
            classified = mark_duplicates(checked, self.source, existing_keys=self._existing_keys(spark, since)).persist(
                StorageLevel.MEMORY_AND_DISK
            )
            counts = {row[CHECK]: int(row["count"]) for row in classified.groupBy(CHECK).count().collect()}
            accepted_count = counts.pop(None, 0)
            checked.unpersist()
            clock.lap("duplicates")
            self._check_reconciled(batch_id, read, accepted_count, counts)
            accepted, quarantined = split_classified(classified, self.source)
            # Appended even when empty (a commit with no file): it records the batch's transaction version, so a
            # retry after the bronze commit, which finds its own records in bronze, is skipped here as well.
            quarantined = quarantined.withColumn("ingested_at", F.lit(ingested_at))
            self._append(quarantined, self.locations.quarantine, batch_id)
            clock.lap("quarantine")
            bronze = protect(accepted, self.source, self.source_name).withColumn(INGESTED_AT, F.lit(ingested_at))
            self._append(bronze, self.locations.bronze, batch_id)
            clock.lap("bronze")
            self._done(batch_id, read, accepted_count, counts, clock)
        finally:
            if classified is not None:
                classified.unpersist()
            checked.unpersist()

    def _existing_keys(self, spark: SparkSession, since: datetime | None) -> DataFrame | None:
        """Duplicate-check keys of bronze as of the batch's start.

        The table is read as it is now, with no version look-up (``history(1)`` is a Spark job per batch): only
        this query appends to bronze, and its own append comes after the classified batch is cached. A batch
        retried after its bronze append committed classifies its records as duplicates, but both of its appends
        are then skipped by their transaction version (quarantine is appended even when the batch quarantined
        nothing, for that), so nothing changes in the lake.

        Bounded by event time: only bronze rows no older than ``since`` (the batch's oldest candidate) minus
        the source's watermark. A replay carries its original event time, so every replay is still found,
        and the files whose event times are all older are skipped by their statistics: the check reads
        the recent end of bronze, not all of it, and without Spark rebuilding the table's state
        (:func:`common.lake.snapshot_read.read_current`). (An id reused for an event older than that
        bound is not a replay; it is accepted.)
        """
        keys = dedup_columns(self.source)
        if not keys:
            return None
        time_column = self.source.event_time
        if since is None or time_column is None:
            return read_current(spark, self.locations.bronze).select(*keys)
        slack = duration_seconds(self.source.watermark) if self.source.watermark else 0
        bound = since - timedelta(seconds=slack)
        bronze = read_current(spark, self.locations.bronze, time_column=time_column, since=bound)
        return bronze.where(F.col(time_column) >= F.lit(bound)).select(*keys)

    def _append(self, df: DataFrame, path: str, batch_id: int) -> None:
        append_once(df, path, self._app_id, batch_id)
