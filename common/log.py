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
