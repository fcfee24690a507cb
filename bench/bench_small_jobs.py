"""Small jobs: each `loom` job as a data scientist runs it, on a small snapshot use case, Spark start included.

The ``telco`` use case (metadata/telco: one CSV table, one row per customer) with 5,000
customers (``--quick``: 1,000), generated into a throwaway ``LOOM_HOME``. Each job runs as a
subprocess of the ``loom`` console script, one after the other, and is timed from launch to
exit: Python start, imports, Spark and JVM start, the work, and shutdown. Beside them, in the
same run, the floor every Spark job pays: a bare ``build_session`` with one action (Delta's
jars and extension loaded, like the jobs), with the JVM's defaults and with the quick JVM the
short jobs use (common/runtime/jvm.py). The machine load is recorded before each job.

Targets (issue 19, "at low load"): ingest <= 15 s, backfill <= 15 s, train <= 20 s, score <= 15 s.
``audit-pii`` is timed too (no target). Each job's log goes to ``<LOOM_HOME>/logs/<job>.log``;
``LOOM_BENCH_KEEP=1`` keeps the folder to read them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import machine_load_row, throwaway_keys

NAME = "small_jobs"
USECASE = "telco"
MODEL = "telco_churn"
TARGETS = {"ingest": 15.0, "backfill": 15.0, "train": 20.0, "score": 15.0}
FLOOR = """
import sys
from common.runtime.jars import delta_jars
from common.runtime.jvm import driver_options
from common.runtime.spark import build_session, read_profile
quick = driver_options(read_profile("local"), "loom-score", delta_jars()) if sys.argv[1] == "quick" else None
s = build_session("local", app_name="loom-bench-floor", overrides={"spark.driver.extraJavaOptions": quick} if quick else {})
s.range(1).count()
s.stop()
"""


def _loom() -> list[str]:
    script = Path(sys.executable).with_name("loom")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "jobs.cli"]


def _timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run ``command``; returns (seconds, 1-min load at start). A failed job stops the bench with its log's end."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.call(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(command[-4:])} exited {code}: {' | '.join(tail)}")
    return seconds, load


def run(quick: bool) -> list[dict[str, Any]]:
    """Time generate (no Spark), the Spark floor, ingest, backfill, train, score and audit-pii."""
    throwaway_keys()
    customers = 1_000 if quick else 5_000
    home = Path(tempfile.mkdtemp(prefix="loom-bench-small-"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"LOOM_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    logs = home / "logs"
    logs.mkdir()
    loom = _loom()
    as_of = "2026-01-01"
    steps = [
        ("generate", [*loom, "generate", "--usecase", USECASE, "--customers", str(customers), "--start", as_of]),
        ("spark floor, JVM defaults", [sys.executable, "-c", FLOOR, "default"]),
        ("spark floor, quick JVM", [sys.executable, "-c", FLOOR, "quick"]),
        ("ingest", [*loom, "ingest", "--usecase", USECASE]),
        ("backfill", [*loom, "backfill", "--usecase", USECASE]),
        ("train", [*loom, "train", "--usecase", USECASE, "--model", MODEL]),
        ("score", [*loom, "score", "--usecase", USECASE, "--model", f"{MODEL}@champion", "--at", "2026-01-02"]),
        ("audit-pii", [*loom, "audit-pii", "--usecase", USECASE, "--sample", "20"]),
    ]
    rows: list[dict[str, Any]] = [machine_load_row(f"; {customers:,} customers of use case {USECASE}")]
    try:
        for name, command in steps:
            seconds, load = _timed(command, env, logs / f"{name.replace(' ', '_').replace(',', '')}.log")
            target = TARGETS.get(name)
            rows.append(
                {
                    "metric": f"{name} (subprocess, Spark start included)"
                    if name != "generate"
                    else "generate (no Spark)",
                    "value": round(seconds, 2),
                    "unit": "s",
                    "target": f"<= {target:g}" if target else None,
                    "note": f"load {load:.2f} at start"
                    + (
                        "; Python + Spark/JVM + Delta start, one action, stop" if name.startswith("spark floor") else ""
                    ),
                }
            )
    finally:
        if os.environ.get("LOOM_BENCH_KEEP") == "1":
            print(f"bench small_jobs: kept {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    return rows
