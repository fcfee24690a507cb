"""Ingestion: landing files -> bronze Delta (typed, PII protected) + quarantine Delta.

* :mod:`~common.ingest.readers`: one file-stream reader per format;
* :mod:`~common.ingest.validation`: :func:`validate_records`, the pure per-batch checks;
* :mod:`~common.ingest.redaction`: no raw PII in quarantine;
* :mod:`~common.ingest.writer`: the idempotent ``foreachBatch`` writes;
* :mod:`~common.ingest.stream`: :func:`ingest_source` and :func:`start_ingest_stream`;
* :mod:`~common.ingest.report`: :class:`IngestReport` and its reconciliation.

Bronze of a ``kind: table`` source keeps every version it receives (append
only); readers take the latest row per key by ``event_time``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module. Loaded on first use, so that importing one submodule does not
# pull in Spark and Delta.
_EXPORTS = {
    "IngestReport": "common.ingest.report",
    "render_reports": "common.ingest.report",
    "ingest_source": "common.ingest.stream",
    "run_until_stopped": "common.ingest.stream",
    "start_ingest_stream": "common.ingest.stream",
    "stop_gracefully": "common.ingest.stream",
    "stop_on_signals": "common.ingest.stream",
    "validate_records": "common.ingest.validation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'common.ingest' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
