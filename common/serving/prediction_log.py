"""The REST service's prediction log: every answered prediction, appended to a Delta table off the request path.

The request only appends a record (:class:`~common.serving.prediction_rows.LoggedRequest`)
to an in-memory queue (:meth:`PredictionLogger.log`: a ``deque.append``, no lock
held across I/O, no bound that could make it wait). A background thread turns
the queued records into an Arrow table every ``flush_interval_s`` seconds
(sooner when ``max_rows`` rows wait) and hands it to a
:class:`~common.serving.prediction_sink.PredictionSink`, in production the Delta
table written with delta-rs.

The concepts live in modules of their own:

* :mod:`common.serving.prediction_rows`: the queued record and the rows (columns) it becomes;
* :mod:`common.serving.prediction_sink`: the sink, the Delta table, transaction ids;
* :mod:`common.serving.prediction_spool`: Parquet files of rows the sink could not take;
* this module: the queue, the writer thread, retries and shutdown, which decide
  when to write, retry, spool and recover.

Nothing is dropped:

* a failed write keeps its rows and is retried with backoff (0.5 s doubling to
  30 s); each batch carries a Delta transaction id (``txn``: one app id per
  logger, the batch number as version), so a write that committed but reported
  an error is not appended twice;
* :meth:`PredictionLogger.close` stops the thread and writes what remains; if
  the sink still fails, or the thread is stuck in a write, the rows go to
  Parquet files in the spool folder (``<table>/_spool``), and the error log
  names them. The same happens during a long outage once ``spill_rows`` rows
  wait, so memory stays bounded;
* the next logger to start (any worker, later) appends the spooled files first
  and deletes them. A file is locked while it is loaded (two workers starting
  together do not both load it) and is appended under a transaction id of its
  own, so a file whose rows landed before a crash is not appended again.

What it cannot save: the queue of a process killed without a shutdown (SIGKILL,
out of memory), at most the last ``flush_interval_s`` seconds of predictions.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from common.serving.prediction_rows import LoggedRequest, rows_table, stamp_logged_at
from common.serving.prediction_sink import PredictionSink, Txn
from common.serving.prediction_spool import UnreadableSpoolFile, load_spool_file, spooled_files, write_spool_file

if TYPE_CHECKING:
    from common.serving.metrics import PredictionLogMetrics

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
CLOSE_ATTEMPTS = 3


@dataclass
class _Batch:
    """Rows taken from the queue, with the txn they are written under and the failed attempts so far."""

    txn: Txn
    table: pa.Table
    failures: int = 0


class _Metrics:
    """The logger's Prometheus metrics, or nothing (:class:`common.serving.metrics.PredictionLogMetrics`)."""

    def __init__(self, metrics: PredictionLogMetrics | None) -> None:
        self.m = metrics

    def add(self, name: str, amount: float) -> None:
        if self.m is not None and amount:
            getattr(self.m, name).inc(amount)

    def pending(self, rows: int) -> None:
        if self.m is not None:
            self.m.pending.set(rows)


class PredictionLogger:
    """Queues answered predictions and writes them to ``sink`` from a background thread.

    ``spool_dir``: where rows go when the sink cannot take them at shutdown (None: they
    are reported lost). ``flush_interval_s``: how long rows may wait; ``max_rows``: rows
    per write (more waiting wakes the thread early); ``spill_rows``: rows kept in memory
    while the sink fails before they go to the spool; ``close_timeout_s``: how long
    :meth:`close` waits for the writer before it spools around a write that hangs (keep it
    below the grace period of the process manager, e.g. Kubernetes' 30 s).
    """

    def __init__(
        self,
        sink: PredictionSink,
        *,
        spool_dir: str | Path | None = None,
        flush_interval_s: float = 5.0,
        max_rows: int = 10_000,
        spill_rows: int = 200_000,
        close_timeout_s: float = 20.0,
        metrics: PredictionLogMetrics | None = None,
    ) -> None:
        self.sink = sink
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.flush_interval_s = flush_interval_s
        self.max_rows = max_rows
        self.spill_rows = spill_rows
        self.close_timeout_s = close_timeout_s
        self._metrics = _Metrics(metrics)
        self._queue: deque[LoggedRequest] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._closed = False
        self._abandoned = False
        self._writing = False  # in a sink call (close may then spool around it)
        self._close_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._app_id = _new_app_id()
        self._seq = 0
        self._held: _Batch | None = None  # taken from the queue, not written yet
        self._backoff_s = FIRST_BACKOFF_S
        self._retry_at = 0.0
        self._spool_dirty = True  # look for spooled files at start
        # row counts: _queued by the request path, the others by the writer thread only
        self._queued = 0
        self._published = 0  # of _queued, in the Prometheus counter
        self._publish_lock = threading.Lock()
        self._taken = 0
        self.written_rows = 0
        self.recovered_rows = 0
        self.spooled_rows = 0
        self.lost_rows = 0
        self.spool_files: list[Path] = []

    # -- the request path ---------------------------------------------------------

    def log(self, record: LoggedRequest) -> None:
        """Queue one answered request. Never waits: an append to a deque, no I/O."""
        self._queue.append(record)
        rows = len(record.keys)
        self._queued += rows  # the counter learns it from publish_queued (off the request path)
        if self._closed:
            # the server answers requests only before its shutdown closes the log: a bug if seen
            log.error("prediction logged after the prediction log was closed: %d row(s) will not be written", rows)
        elif self._queued - self._taken >= self.max_rows and not self._retry_at:
            self._wake.set()  # a full batch waits (while the sink fails, the backoff decides)

    def publish_queued(self) -> None:
        """Add the rows queued since the last call to ``loom_serving_predictions_logged_total``.

        Called by :meth:`common.serving.metrics.ServingMetrics.flush` (batched, like every
        per-request figure) and by :meth:`close`.
        """
        with self._publish_lock:
            queued = self._queued
            self._metrics.add("queued", queued - self._published)
            self._published = queued

    @property
    def pending_rows(self) -> int:
        """Rows queued or waiting for a retry."""
        held = self._held
        return self._queued - self._taken + (held.table.num_rows if held is not None else 0)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (it first appends files left in the spool)."""
        if self._thread is None and not self._closing:
            self._thread = threading.Thread(target=self._run, name="loom-prediction-log", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and write (or spool) every queued row. Idempotent; blocks at most
        about ``close_timeout_s``."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._closing = True
        self._wake.set()
        thread = self._thread
        if thread is None:
            self._final_flush()
        else:
            thread.join(self.close_timeout_s)
            if thread.is_alive() and self._writing:
                # stuck in a write: spool the rest. The batch in flight keeps its txn, so if
                # that write commits after all, loading the spooled copy skips it.
                self._abandoned = True
                self._spill(f"a write to {self.sink} did not finish within {self.close_timeout_s:.0f}s")
            elif thread.is_alive():  # stuck in the spool's own I/O: two spillers would race
                log.error(
                    "prediction log: the writer did not stop within %.0fs; %d queued row(s) may be lost",
                    self.close_timeout_s,
                    self.pending_rows,
                )
        self._metrics.pending(self.pending_rows)
        self.publish_queued()
        log.info(
            "prediction log closed: %d row(s) written to %s, %d recovered from the spool, %d spooled, %d lost",
            self.written_rows,
            self.sink,
            self.recovered_rows,
            self.spooled_rows,
            self.lost_rows,
        )

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        self._recover_spool()
        while not self._closing:
            failing = self._held is not None
            wait = min(self.flush_interval_s, max(0.0, self._retry_at - time.monotonic())) if failing else None
            self._wake.wait(self.flush_interval_s if wait is None else wait)
            self._wake.clear()
            if self._closing or self._abandoned:
                break
            if time.monotonic() >= self._retry_at:
                self._flush()
            elif self.pending_rows >= self.spill_rows:
                self._spill(f"{self.sink} has failed for a while and {self.pending_rows} rows wait")
            self._metrics.pending(self.pending_rows)
        if not self._abandoned:
            self._final_flush()

    def _take(self, limit: int | None = None) -> _Batch | None:
        """The next batch: whole records from the queue, until ``max_rows`` (or ``limit``) rows."""
        records: list[LoggedRequest] = []
        rows = 0
        most = self.max_rows if limit is None else min(self.max_rows, limit)
        while rows < most:
            try:
                record = self._queue.popleft()
            except IndexError:
                break
            records.append(record)
            rows += len(record.keys)
        if not records:
            return None
        self._taken += rows
        self._seq += 1
        return _Batch(Txn(self._app_id, self._seq), rows_table(records))

    def _flush(self, everything: bool = False) -> bool:
        """Write the held batch, then the rows queued when the flush began (``everything``: until the queue
        is empty); False (and a retry time) on a failure.

        Rows queued during the flush wait for the next one: draining until the queue was empty wrote
        without pause under load (a write takes tens of milliseconds, in which more requests arrive),
        dozens of small commits a second per worker, each paying a commit's fixed cost.
        """
        due = self._queued - self._taken
        while not self._abandoned:
            if self._held is None:
                if not everything and due <= 0:
                    break
                self._held = self._take(None if everything else due)
                if self._held is None:
                    break
                due -= self._held.table.num_rows
            if not self._attempt(self._held):
                self._retry_at = time.monotonic() + self._backoff_s
                self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)
                return False
            self._held = None
            self._backoff_s = FIRST_BACKOFF_S
            self._retry_at = 0.0
        if self._spool_dirty and not self._abandoned:
            self._recover_spool()
        return True

    def _attempt(self, batch: _Batch) -> bool:
        rows = batch.table.num_rows
        self._writing = True
        try:
            # after a failure the commit may have happened anyway: its txn says so
            if not (batch.failures and self.sink.written(batch.txn)):
                self.sink.write(stamp_logged_at(batch.table), batch.txn)
        except Exception as err:  # any sink failure: keep the rows, retry later
            batch.failures += 1
            self._metrics.add("errors", 1)
            log.warning(
                "prediction log: writing %d row(s) to %s failed (attempt %d), kept for a retry: %s",
                rows,
                self.sink,
                batch.failures,
                err,
            )
            return False
        finally:
            self._writing = False
        self.written_rows += rows
        self._metrics.add("written", rows)
        return True

    def _final_flush(self) -> None:
        for attempt in range(CLOSE_ATTEMPTS):
            if self._flush(everything=True):
                return
            if attempt + 1 < CLOSE_ATTEMPTS:
                time.sleep(FIRST_BACKOFF_S * 2**attempt)
        if not self._abandoned:
            self._spill(f"{self.sink} still failed at shutdown after {CLOSE_ATTEMPTS} attempts")

    # -- the spool ---------------------------------------------------------------------------

    def _spill(self, reason: str) -> None:
        """Move the held batch and the whole queue to spool files (memory bound, or shutdown)."""
        batches = [self._held] if self._held is not None else []
        self._held = None
        while (batch := self._take()) is not None:
            batches.append(batch)
        if not batches:
            return
        # later batches of this app id are never written: the spooled ones get their own txn when
        # loaded, and the next batches a new app id, so "committed up to version n" stays true
        self._app_id, self._seq = _new_app_id(), 0
        rows = sum(b.table.num_rows for b in batches)
        files: list[Path] = []
        failure = "no spool folder is configured" if self.spool_dir is None else None
        if self.spool_dir is not None:
            try:
                self.spool_dir.mkdir(parents=True, exist_ok=True)
                for batch in batches:
                    files.append(write_spool_file(self.spool_dir, batch.table, batch.txn))
            except Exception as err:  # disk full, permissions: say what is lost rather than die
                failure = str(err)
        spooled = sum(b.table.num_rows for b in batches[: len(files)])
        if files:
            self.spooled_rows += spooled
            self.spool_files.extend(files)
            self._spool_dirty = True
            self._metrics.add("spooled", spooled)
            log.error(
                "prediction log: %s; %d row(s) saved to %s; the next start of the service appends them to %s",
                reason,
                spooled,
                ", ".join(str(f) for f in files),
                self.sink,
            )
        if rows > spooled:
            self.lost_rows += rows - spooled
            self._metrics.add("lost", rows - spooled)
            log.error("prediction log: %d row(s) LOST: %s, and spooling failed: %s", rows - spooled, reason, failure)

    def _recover_spool(self) -> None:
        """Append every spooled file to the sink and delete it; stop at the first failure."""
        self._spool_dirty = False
        if self.spool_dir is None:
            return
        for path, original in spooled_files(self.spool_dir):
            if self._abandoned:
                break
            self._writing = True
            try:
                rows = load_spool_file(path, self.sink, original)
            except UnreadableSpoolFile as err:  # retrying cannot help: set it aside, go on with the others
                self._metrics.add("errors", 1)
                log.error("prediction log: spooled %s cannot be read (%s); moved to %s", path, err.__cause__, err)
                continue
            except Exception as err:  # the sink is down: keep the file, try again after a good write
                self._spool_dirty = True
                self._metrics.add("errors", 1)
                log.warning("prediction log: cannot append spooled %s to %s yet: %s", path, self.sink, err)
                return
            finally:
                self._writing = False
            if rows:
                self.recovered_rows += rows
                self._metrics.add("recovered", rows)
                log.info("prediction log: appended %d spooled row(s) from %s to %s", rows, path, self.sink)


def _new_app_id() -> str:
    return f"loom-rest-{uuid.uuid4().hex}"
