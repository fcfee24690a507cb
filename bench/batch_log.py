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
        clock = record.args[-1] if isinstance(record.args, tuple) and record.args else None
        for name, seconds in getattr(clock, "laps", []):
            totals[name] += seconds
    return batches, dict(totals)
