"""Logging set-up shared by every job: one line per record, UTC timestamps."""

from __future__ import annotations

import logging
import os
import sys
import time


class CurrentStderrHandler(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is at each record, not as it was when the handler was made.

    The root logger keeps Loom's handler for the life of the process. A job run in-process (a notebook, a test
    that captures its output) may swap ``sys.stderr`` and close the old stream; a handler bound to it would
    then fail on every record ("I/O operation on closed file")."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler assigns it; the current sys.stderr is always used
        pass


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once (``LOOM_LOG_LEVEL`` overrides the level)."""
    chosen = (level or os.environ.get("LOOM_LOG_LEVEL") or "INFO").upper()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    root = logging.getLogger()
    if not any(getattr(h, "_loom", False) for h in root.handlers):
        handler = CurrentStderrHandler()
        handler.setFormatter(formatter)
        handler._loom = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(chosen)
    for noisy in ("py4j", "urllib3", "alembic", "mlflow.store", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # py4j logs the traceback of every exception a foreachBatch function raises, then hands the same text to
    # Spark, which fails the query with it: the job reports it once (one line for a LoomError), not twice
    logging.getLogger("py4j.clientserver").setLevel(logging.CRITICAL)


class Stopwatch:
    """Seconds per step of a batch, for its log line (where does the time go?)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps.append((name, now - self._last))
        self._last = now

    @property
    def total(self) -> float:
        return sum(seconds for _, seconds in self.laps)

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.laps)
