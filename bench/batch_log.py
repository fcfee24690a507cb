"""The per-micro-batch log lines of ingest, features and triggers, captured during a bench run.

Each batch line's last argument is the batch's :class:`common.runtime.log.Stopwatch`: summed per step, they say
where a run's batch time went.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class BatchCapture(logging.Handler):
    """Keeps the records of batch lines (their args carry the timings)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "batch" in str(record.msg):
            self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        """The records so far, and start afresh."""
        taken, self.records = self.records, []
        return taken


@contextmanager
def captured(logger_names: Iterable[str]) -> Iterator[BatchCapture]:
    """Capture the batch lines of these loggers (at INFO) while the block runs."""
    capture = BatchCapture()
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(capture)
        logger.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(capture)
            logger.setLevel(level)


def batch_steps(records: list[logging.LogRecord], logger: str) -> tuple[int, dict[str, float]]:
    """Batches and summed seconds per step (the Stopwatch laps) of one logger's batch lines."""
    totals: dict[str, float] = defaultdict(float)
    batches = 0
    for record in records:
        if record.name != logger:
            continue
        batches += 1
        # the batch's Stopwatch: the last argument of ingest and feature lines, one of the middle ones of trigger lines
        clocks = [arg for arg in record.args if hasattr(arg, "laps")] if isinstance(record.args, tuple) else []
        for clock in clocks[-1:]:
            for name, seconds in clock.laps:
                totals[name] += seconds
    return batches, dict(totals)


class ProgressCapture:
    """Streaming query progress reports (``durationMs`` per phase: latestOffset, getBatch, queryPlanning, addBatch,
    walCommit, commitOffsets, triggerExecution), summed per phase: what a query's micro-batches spend outside
    ``foreachBatch`` (addBatch is the batch function; the rest is Spark's own per-batch bookkeeping)."""

    def __init__(self) -> None:
        from pyspark.sql.streaming import StreamingQueryListener

        capture = self

        class _Listener(StreamingQueryListener):
            def onQueryStarted(self, event) -> None:
                pass

            def onQueryProgress(self, event) -> None:
                capture.add(dict(event.progress.durationMs or {}), event.progress.numInputRows)

            def onQueryIdle(self, event) -> None:
                pass

            def onQueryTerminated(self, event) -> None:
                pass

        self.listener = _Listener()
        self.reset()

    def reset(self) -> None:
        self.phases: dict[str, float] = defaultdict(float)
        self.batches = 0

    def add(self, durations: dict[str, int], rows: int) -> None:
        self.batches += 1
        for phase, millis in durations.items():
            self.phases[phase] += millis / 1000

    def take(self) -> tuple[int, dict[str, float]]:
        """(progress reports, seconds per phase) so far, and start afresh."""
        taken = self.batches, dict(self.phases)
        self.reset()
        return taken


@contextmanager
def progress_captured(spark) -> Iterator[ProgressCapture]:
    """Capture the session's streaming progress reports while the block runs."""
    capture = ProgressCapture()
    spark.streams.addListener(capture.listener)
    try:
        yield capture
    finally:
        spark.streams.removeListener(capture.listener)
