"""Streaming pipeline throughput against a floor, in the same run, on the same generated data (local[2]).

The whole pipeline in catch-up (:mod:`bench.catch_up`), sustained over more than 2 million events:

* set-up, not timed: a small churn data set is ingested and backfilled and the churn model trained and
  registered as ``churn@champion`` in the bench's own work folder;
* a large event log (20,000 customers × 30 days, about 2.1 million events, later dates) lands;
* **floor**: the bare Structured Streaming query over the log's JSON files (typed columns -> watermark ->
  1-hour windowed count and sum per entity -> ``foreachBatch``);
* **Loom**: ingest (landing -> bronze + quarantine, every source), features (bronze -> the 18 windowed
  features of ``activity`` and the ``profile`` snapshot -> Redis + offline history), triggers + scoring
  (bronze -> firings -> churn@champion -> predictions + actions + Redis), each in micro-batches of
  ``FILES_PER_TRIGGER`` files, one part after the other;
* the ratio Loom / floor, the machine load at start, and where each part's batch time goes.

``--quick``: 2,000 customers × 7 days, a smoke run. The proactive bench runs the same catch-up on a smaller
log, then measures freshness.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import local_spark, machine_load_row, throwaway_keys
from bench.batch_log import captured
from bench.catch_up import LOGGERS, catch_up, catch_up_rows, floor_query, floor_rows, prepare_champion

NAME = "streaming"
FILES_PER_TRIGGER = 24
TRAIN = (500, 8)  # customers × days of the model's training data (set-up)


def run(quick: bool) -> list[dict[str, Any]]:
    throwaway_keys()
    from common.compile import compile_usecase
    from common.generate import GenerateOptions, generate_landing
    from common.runtime.redis_server import configured_or_throwaway
    from common.settings import Paths
    from common.spec import load_usecase

    rows: list[dict[str, Any]] = [machine_load_row(", shared with other agents' Spark jobs: figures are noisy")]
    customers, days = (2_000, 7) if quick else (20_000, 30)  # 28 days gave 1.96M events: 30 clear 2M
    log_end = datetime.now(UTC).date() - timedelta(days=2)
    log_start = log_end - timedelta(days=days)
    home = Path(tempfile.mkdtemp(prefix="loom-bench-stream-"))
    work = Paths(home)
    spec = load_usecase("churn")
    plan = compile_usecase(spec)
    try:
        with local_spark("streaming") as spark, configured_or_throwaway() as url, captured(LOGGERS) as capture:
            outcome, setup = prepare_champion(spark, plan, work, *TRAIN, log_start)
            options = GenerateOptions(customers=customers, days=days, start=log_start, rows_per_file=25_000)
            summary = generate_landing(spec, work, options, overwrite=True)
            events = work.landing / spec.name / "events"
            floor_s, floor_batches = floor_query(spark, events, home / "floor-checkpoint", FILES_PER_TRIGGER)
            caught = catch_up(spark, plan, work, url, capture, FILES_PER_TRIGGER)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    rows += catch_up_rows(caught, outcome, setup, customers, days, FILES_PER_TRIGGER)
    rows += floor_rows(caught["events"], floor_s, floor_batches, caught)
    rows.append({"metric": "generated events", "value": summary.rows.get("events", caught["events"]), "unit": "rows"})
    for row in rows:
        row.setdefault("target", None)
    return rows
