"""Running ingestion: one file-stream query per source, as a batch (``availableNow``) or a stream.

``mode="batch"`` processes every file not yet in the checkpoint and stops, so
running it again on the same files adds nothing. ``mode="stream"`` polls the
landing folder every ``trigger_interval`` until stopped; a stop waits for the
running micro-batch to finish (up to a grace period) before stopping the query.
Bad records never stop a stream: they go to quarantine.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pyspark.errors import StreamingQueryException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from common.errors import ConfigError
from common.ingest.broker_health import broker_outage
from common.ingest.readers import read_landing_stream
from common.ingest.report import IngestReport
from common.ingest.writer import BatchWriter, check_dedup_columns, ensure_tables
from common.lake.paths import IngestLocations
from common.settings import Paths
from common.spec.base import duration_seconds
from common.spec.sources import Source
from common.spec.usecase import UseCase

log = logging.getLogger(__name__)

Mode = Literal["batch", "stream"]
STOP_GRACE_S = 60.0


def source_of(spec: UseCase, source_name: str) -> Source:
    """The source called ``source_name``, or a ConfigError listing the known ones."""
    source = spec.sources.get(source_name)
    if source is None:
        raise ConfigError(
            f"use case {spec.name!r} has no source {source_name!r}. Fix: use one of {sorted(spec.sources)}"
        )
    return source


def start_ingest_stream(
    spark: SparkSession,
    spec: UseCase,
    source_name: str,
    work: Paths,
    *,
    mode: Mode = "stream",
    trigger_interval: str = "10 seconds",
    max_files_per_trigger: int | None = None,
    landing: Path | str | None = None,
    report: IngestReport | None = None,
) -> StreamingQuery:
    """Start ingesting one source; returns the running query.

    ``report`` (optional) is updated after every micro-batch; a LoomError raised
    in a batch is stored in ``report.failure``. ``landing`` overrides the landing
    root (default ``work.landing / spec.name``).
    """
    source = source_of(spec, source_name)
    check_dedup_columns(source, source_name)
    if mode not in ("batch", "stream"):
        raise ConfigError(f"ingest mode {mode!r} is unknown. Fix: use 'batch' or 'stream'")
    try:
        duration_seconds(trigger_interval)
    except ValueError as error:
        raise ConfigError(f"--trigger-interval: {error}") from None
    if max_files_per_trigger is not None and max_files_per_trigger < 1:
        raise ConfigError(f"--max-files-per-trigger {max_files_per_trigger} must be at least 1")
    locations = IngestLocations.of(work, spec.name, source_name, source, landing)
    report = report if report is not None else IngestReport(source_name)
    ensure_tables(spark, source, source_name, locations)
    writer = BatchWriter(source, source_name, locations, report)
    stream = read_landing_stream(spark, source, locations.folder, max_files_per_trigger=max_files_per_trigger)
    tag = hashlib.sha1(locations.checkpoint.encode()).hexdigest()[:8]
    builder = (
        stream.writeStream.queryName(f"loom_ingest_{spec.name}_{source_name}_{tag}")
        .option("checkpointLocation", locations.checkpoint)
        .foreachBatch(writer)
    )
    builder = (
        builder.trigger(availableNow=True) if mode == "batch" else builder.trigger(processingTime=trigger_interval)
    )
    query = builder.start()
    writer.bind(query.id)
    log.info("ingest %s.%s: %s from %s (query %s)", spec.name, source_name, mode, locations.folder, query.id)
    return query


def ingest_source(
    spark: SparkSession,
    spec: UseCase,
    source_name: str,
    work: Paths,
    mode: Mode = "batch",
    *,
    trigger_interval: str = "10 seconds",
    max_files_per_trigger: int | None = None,
    landing: Path | str | None = None,
    stop: threading.Event | None = None,
) -> IngestReport:
    """Ingest one source and return its reconciled report.

    ``batch``: every new file, then return. ``stream``: until ``stop`` is set
    (or the query fails). Raises the LoomError of a failed batch, and
    :class:`DataError` if the counts do not reconcile.
    """
    report = IngestReport(source_name)
    query = start_ingest_stream(
        spark,
        spec,
        source_name,
        work,
        mode=mode,
        trigger_interval=trigger_interval,
        max_files_per_trigger=max_files_per_trigger,
        landing=landing,
        report=report,
    )
    try:
        if mode == "batch":
            with contextlib.suppress(StreamingQueryException):
                query.awaitTermination()  # a failure is re-raised below, as the user error it was
        else:
            run_until_stopped([query], stop or threading.Event())
    finally:
        if query.isActive:
            stop_gracefully(query)
    raise_failure(query, report, spec)
    report.check()
    return report


def raise_failure(query: StreamingQuery, report: IngestReport, spec: UseCase) -> None:
    """Re-raise why ``query`` failed: the LoomError of a batch, the error of a Kafka broker that stopped
    answering (common.ingest.broker_health), else Spark's exception."""
    if report.failure is not None:
        raise report.failure
    error = query.exception()
    if error is None:
        return
    outage = broker_outage(report.source, spec.sources[report.source])
    if outage is not None:
        raise outage from error
    raise error


def stop_gracefully(query: StreamingQuery, grace_s: float = STOP_GRACE_S, poll_s: float = 0.2) -> None:
    """Stop ``query`` between micro-batches: wait (up to ``grace_s``) for the running one to finish.

    Even a stop in the middle of a batch is safe (the batch is redone from the
    checkpoint, and its Delta writes are idempotent); waiting only saves the work.
    """
    deadline = time.monotonic() + grace_s
    while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
        time.sleep(poll_s)
    query.stop()


def run_until_stopped(queries: list[StreamingQuery], stop: threading.Event, poll_s: float = 1.0) -> None:
    """Block until ``stop`` is set or a query ends (fails), then stop all of them gracefully."""
    try:
        while not stop.is_set() and all(query.isActive for query in queries):
            stop.wait(poll_s)
    finally:
        for query in queries:
            if query.isActive:
                stop_gracefully(query)


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[threading.Event]:
    """An event set by SIGTERM or Ctrl-C while the block runs (main thread only); handlers restored after."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("received %s: stopping after the current micro-batch", signal.Signals(signum).name)
        stop.set()

    previous = {number: signal.signal(number, handle) for number in signals}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
