"""The REST service's prediction log: every answered prediction, appended to a Delta table off the request path.

The request only appends a record to an in-memory queue (:meth:`PredictionLogger.log`:
a ``deque.append``, no lock held across I/O, no bound that could make it wait).
A background thread turns the queued records into an Arrow table every
``flush_interval_s`` seconds (sooner when ``max_rows`` rows wait) and hands it
to a :class:`PredictionSink`; :class:`DeltaPredictionSink` appends it with
delta-rs (no JVM in the serving process). Several workers may append to the
same table: delta-rs retries an append whose commit lost the race.

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

Rows (one per entity): the entity key as a string (column named after the
model's entity key), ``prediction_ts`` (the lookup time of the request, UTC),
``score``, ``model_name``, ``model_version``, ``alias`` (null when the request
named the version), ``known``, ``missing`` (names of the features passed as
NaN), ``request_id``, ``client`` (the API key's name, never the key) and
``logged_at`` (when the row was written). No feature value.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from common.serving.metrics import PredictionLogMetrics

log = logging.getLogger(__name__)

UTC_US = pa.timestamp("us", tz="UTC")
SPOOL_FOLDER = "_spool"  # inside the table folder: Delta readers and VACUUM skip folders starting with "_"
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
CLOSE_ATTEMPTS = 3
_SPOOL_NAME = re.compile(r"^(?P<app>[A-Za-z0-9_.-]+)-(?P<seq>\d{10})\.parquet$")


@dataclass(frozen=True)
class Txn:
    """A Delta transaction id: ``app_id`` and a version that only grows for that app id."""

    app_id: str
    version: int


class LoggedRequest(NamedTuple):
    """One answered prediction request, as queued by the request path (turned into rows later;
    a tuple: the cheapest record to build on the hot path)."""

    request_id: str
    at_us: int  # the lookup time, epoch microseconds UTC
    client: str  # the API key's name
    model: str
    version: int
    alias: str | None
    entity_key: str
    keys: Sequence[Any]
    scores: np.ndarray
    event_times_us: dict[str, np.ndarray]  # group -> per entity, -1 when absent or stale
    missing: Sequence[Sequence[str]]


def rows_table(records: Sequence[LoggedRequest], logged_at_us: int | None = None) -> pa.Table:
    """The Delta rows of ``records``: one per entity, in request order among requests that read the
    same feature groups.

    Built with list extends and one numpy operation per feature group, not per request: the
    writer thread holds the GIL meanwhile, and requests wait for it.
    """
    key_columns = list(dict.fromkeys(r.entity_key for r in records))
    keys: dict[str, list[Any]] = {name: [] for name in key_columns}
    at: list[int] = []
    request_ids: list[str] = []
    clients: list[str] = []
    models: list[str] = []
    versions: list[int] = []
    aliases: list[str | None] = []
    missing: list[Sequence[str]] = []
    scores: list[np.ndarray] = []
    known: list[np.ndarray] = []
    by_groups: dict[tuple[str, ...], list[LoggedRequest]] = {}
    for r in records:
        by_groups.setdefault(tuple(r.event_times_us), []).append(r)
    for groups, same in by_groups.items():
        for r in same:
            n = len(r.keys)
            for name, column in keys.items():
                column.extend(map(str, r.keys) if name == r.entity_key else [None] * n)  # str: keys may be numbers
            at += [r.at_us] * n
            request_ids += [r.request_id] * n
            clients += [r.client] * n
            models += [r.model] * n
            versions += [r.version] * n
            aliases += [r.alias] * n
            missing += r.missing
            scores.append(r.scores)
        seen = np.zeros(sum(len(r.keys) for r in same), dtype=bool)
        for group in groups:
            seen |= np.concatenate([r.event_times_us[group] for r in same]) >= 0
        known.append(seen)
    logged = time.time_ns() // 1000 if logged_at_us is None else logged_at_us
    columns = {name: pa.array(values, pa.string()) for name, values in keys.items()}
    columns.update(
        {
            "prediction_ts": pa.array(at, pa.int64()).cast(UTC_US),
            "score": pa.array(np.concatenate(scores).astype("float64"), pa.float64(), from_pandas=True),  # NaN: null
            "model_name": pa.array(models, pa.string()),
            "model_version": pa.array(versions, pa.int32()),
            "alias": pa.array(aliases, pa.string()),
            "known": pa.array(np.concatenate(known), pa.bool_()),
            "missing": pa.array(missing, pa.list_(pa.string())),
            "request_id": pa.array(request_ids, pa.string()),
            "client": pa.array(clients, pa.string()),
            "logged_at": pa.array(np.full(len(at), logged, dtype="int64")).cast(UTC_US),
        }
    )
    return pa.table(columns)


def _stamp(table: pa.Table) -> pa.Table:
    """``table`` with ``logged_at`` set to now (the moment it is written)."""
    now = pa.array(np.full(table.num_rows, time.time_ns() // 1000, dtype="int64"), UTC_US)
    return table.set_column(table.schema.get_field_index("logged_at"), "logged_at", now)


class PredictionSink(ABC):
    """Where batches of prediction rows go."""

    @abstractmethod
    def write(self, batch: pa.Table, txn: Txn) -> None:
        """Append ``batch`` atomically, recording ``txn``; raise on failure (the logger retries)."""

    def written(self, txn: Txn) -> bool:
        """Has a batch with ``txn`` (or a later version of its app id) been committed? Default: unknown, no."""
        return False

    def __str__(self) -> str:
        return type(self).__name__


class DeltaPredictionSink(PredictionSink):
    """Appends to the Delta table at ``path`` with delta-rs (created by the first append)."""

    def __init__(self, path: str | Path, max_commit_retries: int = 50) -> None:
        self.path = str(path)
        # several workers append every few seconds: a lost commit race is normal, retry it
        self.max_commit_retries = max_commit_retries

    def write(self, batch: pa.Table, txn: Txn) -> None:
        from deltalake import CommitProperties, Transaction, write_deltalake

        write_deltalake(
            self.path,
            batch,
            mode="append",
            schema_mode="merge",  # a model with another entity key adds its key column
            commit_properties=CommitProperties(
                app_transactions=[Transaction(txn.app_id, txn.version)], max_commit_retries=self.max_commit_retries
            ),
        )

    def written(self, txn: Txn) -> bool:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            committed = DeltaTable(self.path).transaction_version(txn.app_id)
        except TableNotFoundError:
            return False
        return committed is not None and committed >= txn.version

    def __str__(self) -> str:
        return f"Delta table {self.path}"


@dataclass
class _Batch:
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
        self._queued += rows
        self._metrics.add("queued", rows)
        if self._closed:
            # the server answers requests only before its shutdown closes the log: a bug if seen
            log.error("prediction logged after the prediction log was closed: %d row(s) will not be written", rows)
        elif self._queued - self._taken >= self.max_rows and not self._retry_at:
            self._wake.set()  # a full batch waits (while the sink fails, the backoff decides)

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

    def _take(self) -> _Batch | None:
        records: list[LoggedRequest] = []
        rows = 0
        while rows < self.max_rows:
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

    def _flush(self) -> bool:
        """Write the held batch, then everything queued; False (and a retry time) on a failure."""
        while not self._abandoned:
            if self._held is None:
                self._held = self._take()
                if self._held is None:
                    break
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
                self.sink.write(_stamp(batch.table), batch.txn)
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
            if self._flush():
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
                    files.append(_write_spool_file(self.spool_dir, batch))
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
        if self.spool_dir is None or not self.spool_dir.is_dir():
            return
        for path in sorted(self.spool_dir.glob("*.parquet")):
            match = _SPOOL_NAME.match(path.name)
            if match is None or self._abandoned:
                continue
            self._writing = True
            try:
                rows = _load_spool_file(path, self.sink, Txn(match["app"], int(match["seq"])))
            except _UnreadableSpoolFile as err:  # retrying cannot help: set it aside, go on with the others
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


class _UnreadableSpoolFile(Exception):
    """A spool file that is no Parquet file of prediction rows (the message is where it was moved)."""


def _new_app_id() -> str:
    return f"loom-rest-{uuid.uuid4().hex}"


def _write_spool_file(folder: Path, batch: _Batch) -> Path:
    """``batch`` as ``<app id>-<version>.parquet``, written under a temporary name then renamed (atomic)."""
    path = folder / f"{batch.txn.app_id}-{batch.txn.version:010d}.parquet"
    partial = folder / f".{path.name}.{os.getpid()}.tmp"
    pq.write_table(batch.table, partial)
    os.replace(partial, path)
    return path


def _load_spool_file(path: Path, sink: PredictionSink, original: Txn) -> int:
    """Append the spooled ``path`` (once) and delete it; the rows appended, 0 if another process has it."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - held open for the lock
    except FileNotFoundError:
        return 0  # another worker loaded it
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another worker is loading it now
        if os.fstat(handle.fileno()).st_nlink == 0:
            return 0  # loaded and deleted while we waited for the lock
        own = Txn(f"{original.app_id}-{original.version:010d}", 1)
        try:
            table = pq.read_table(handle)
        except Exception as err:  # truncated or foreign file
            aside = path.with_name(path.name + ".unreadable")
            os.replace(path, aside)
            raise _UnreadableSpoolFile(str(aside)) from err
        landed = sink.written(original) or sink.written(own)  # written before the crash
        if not landed:
            sink.write(_stamp(table), own)
        path.unlink()
    return 0 if landed else table.num_rows
