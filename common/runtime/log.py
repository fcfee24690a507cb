"""Logging set-up shared by every job: one line per record, UTC timestamps."""

from __future__ import annotations

import logging
import os
import time


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once (``LOOM_LOG_LEVEL`` overrides the level)."""
    chosen = (level or os.environ.get("LOOM_LOG_LEVEL") or "INFO").upper()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    root = logging.getLogger()
    if not any(getattr(h, "_loom", False) for h in root.handlers):
        handler = logging.StreamHandler()
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
