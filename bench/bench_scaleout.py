"""Stream throughput on local[1], local[2] and a 2-worker Spark standalone cluster, in one run, on the same data.

Issue 15's scale-out bench. One event log (10,000 customers × 21 days, about 760,000 events) is generated
once, and churn@champion is trained once (:func:`bench.scaleout_run.prepare`, in a MLflow store every run
reads through ``MLFLOW_TRACKING_URI``, on training data that ends where the log begins); each run gets a
fresh Loom home whose landing folder holds the same files (hard links) and runs, in a separate process
(:mod:`bench.scaleout_run`, a fresh driver JVM), the whole stream's catch-up (landing JSON -> bronze +
quarantine; bronze -> the windowed features -> Redis + offline history; bronze -> triggers -> churn@champion
through ``spark_udf`` on the executors -> predictions + actions + Redis) in micro-batches of
``FILES_PER_TRIGGER`` files, with its own throwaway Redis:

* ``local[1]`` and ``local[2]``: the ``local`` profile with ``spark.master`` overridden;
* ``standalone``: the ``standalone`` profile as a user of ``loom cluster up`` gets it, ``SPARK_MASTER_URL``
  pointing at :class:`common.runtime.spark_standalone.SparkStandalone` (one master, two workers of 1 core
  each), started by this bench before the run and stopped after it, and ``SPARK_CONF_DIR`` at the cluster's
  defaults (:func:`common.runtime.local_cluster.write_spark_defaults`: 4 shuffle partitions, the quick JVM).

Rates are end to end over the three parts (1 / the sum of each part's seconds per event, as :func:`bench.catch_up.end_to_end`);
CPU seconds are those of the run's whole process tree (driver, Python workers, Redis; for the standalone
run also the master, workers and executors). A row gives the ceiling those put on local[2] / local[1]:
the machine's cores over the cores local[1] kept busy (its driver's threads, Python workers and Redis run
beside its one task slot). ``--quick``: 2,000 customers × 7 days, a smoke run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

from bench import machine_load_row, throwaway_keys
from bench.catch_up import end_to_end, shown

NAME = "scaleout"
FILES_PER_TRIGGER = 24
ROWS_PER_FILE = 10_000  # ~74 files in the full run: 4 micro-batches each
# label, profile, Spark settings over the profile's
RUNS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("local[1]", "local", {"spark.master": "local[1]"}),
    ("local[2]", "local", {"spark.master": "local[2]"}),
    ("standalone", "standalone", {}),
)
RUN_TIMEOUT_S = 1800


def _run(home: Path, profile: str, conf: dict[str, str], env: dict[str, str], pids: list[int]) -> dict[str, Any]:
    """One run in its own process; its result.json."""
    settings = json.dumps(conf)
    command = [sys.executable, "-m", "bench.scaleout_run", str(home), profile, settings, str(FILES_PER_TRIGGER)]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, *map(str, pids)], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{profile} {settings} run failed ({done.returncode}): {done.stderr[-3000:]}")
    result = json.loads((home / "result.json").read_text())
    result["process_s"] = time.perf_counter() - started
    return result


def _prepare_champion(home: Path, log_start: date, env: dict[str, str]) -> str:
    """Train churn@champion once, in ``home``'s MLflow store; its tracking URI, for every run."""
    from common.runtime.tracking import tracking_uri
    from common.settings import Paths

    command = [sys.executable, "-m", "bench.scaleout_run", "--prepare", str(home), log_start.isoformat()]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training the champion failed ({done.returncode}): {done.stderr[-3000:]}")
    return tracking_uri(Paths(home))


def _seconds(caught: dict[str, Any]) -> float:
    """The timed parts' seconds (JVM start, planning before the first batch and the stop not included)."""
    return caught["ingest_s"] + caught["features_s"] + caught["triggers_s"]


def _row(label: str, caught: dict[str, Any]) -> dict[str, Any]:
    total = _seconds(caught)
    ingest_batches, ingest_steps = caught["ingest"]
    feature_batches, feature_steps = caught["features"]
    trigger_batches, trigger_steps = caught["triggers"]
    return {
        "metric": f"{label}: the whole stream end to end",
        "value": round(end_to_end(caught), 1),
        "unit": "events/s",
        "note": (
            f"master {caught['master']}, {caught['executors']} executor(s), shuffle partitions "
            f"{caught['shuffle_partitions']}; {caught['events']:,} events -> {caught['bronze']:,} bronze in "
            f"{total:.1f}s (ingest {caught['ingest_s']:.1f}s, {ingest_batches} batches: {shown(ingest_steps)}; "
            f"features {caught['features_s']:.1f}s, {feature_batches} batches: {shown(feature_steps)}; "
            f"triggers {caught['triggers_s']:.1f}s, {trigger_batches} batches: {shown(trigger_steps)}, "
            f"{caught['scored']:,} firings scored); "
            f"CPU {caught['cpu_s']:.1f}s = {caught['cpu_s'] / total:.2f} cores busy; "
            f"process with JVM start and stop {caught['process_s']:.1f}s"
        ),
    }


def run(quick: bool) -> list[dict[str, Any]]:
    throwaway_keys()  # the runs inherit the keys
    from common.generate import GenerateOptions, generate_landing
    from common.runtime.local_cluster import write_spark_defaults
    from common.runtime.spark_standalone import SparkStandalone
    from common.settings import Paths
    from common.spec import load_usecase

    rows = [machine_load_row(", shared with other agents: the three runs are sequential, read them with it")]
    customers, days = (2_000, 7) if quick else (10_000, 21)
    end = datetime.now(UTC).date() - timedelta(days=2)
    start = end - timedelta(days=days)
    options = GenerateOptions(customers=customers, days=days, start=start, rows_per_file=ROWS_PER_FILE)
    root = Path(tempfile.mkdtemp(prefix="loom-bench-scaleout-"))
    env = dict(os.environ)
    # the executors' Python (a standalone executor otherwise starts `python3` from PATH); the bench's code first
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parents[1]), env.get("PYTHONPATH")) if p)
    env.pop("REDIS_URL", None)  # each run its own empty Redis: a shared one would skip the later runs' writes
    env.pop("LOOM_REDIS_CLUSTER", None)
    results: dict[str, dict[str, Any]] = {}
    try:
        summary = generate_landing(load_usecase("churn"), Paths(root / "data"), options, overwrite=True)
        env["MLFLOW_TRACKING_URI"] = _prepare_champion(root / "champion", start, env)
        for index, (label, profile, conf) in enumerate(RUNS):
            home = root / f"run-{index}"
            shutil.copytree(root / "data" / "landing", home / "landing", copy_function=os.link)
            if profile == "standalone":
                # SparkStandalone reads os.environ: the executors it starts need the same interpreter and path
                with (
                    patch.dict(os.environ, env, clear=True),
                    SparkStandalone(directory=root / f"cluster-{index}", workers=2, cores=1) as cluster,
                ):
                    pids = [process.pid for process in cluster.processes]
                    # the cluster's own defaults, as `loom cluster up` writes them (shuffle partitions, JVM options)
                    conf_dir = write_spark_defaults(root / f"cluster-{index}" / "conf", slots=2)
                    cluster_env = {**env, "SPARK_MASTER_URL": cluster.master_url, "SPARK_CONF_DIR": str(conf_dir)}
                    results[label] = _run(home, profile, conf, cluster_env, pids)
            else:
                results[label] = _run(home, profile, conf, env, [])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows += ratio_rows(results)
    rows += [
        {
            "metric": "generated events",
            "value": summary.rows.get("events", 0),
            "unit": "rows",
            "note": f"{customers:,} customers × {days} days, {ROWS_PER_FILE:,} rows per file, the same files for every run",
        },
    ]
    for row in rows:
        row.setdefault("target", None)
    return rows


def ratio_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's row, the ratios between runs, and the ceiling local[1]'s CPU use puts on local[2]'s speed-up."""
    rates = {label: end_to_end(caught) for label, caught in results.items()}
    rows = [_row(label, caught) for label, caught in results.items()]
    busy = results["local[1]"]["cpu_s"] / _seconds(results["local[1]"])
    cpu = {label: caught["cpu_s"] / caught["events"] * 1e6 for label, caught in results.items()}
    rows += [
        {
            "metric": "ratio local[2] / local[1]",
            "value": round(rates["local[2]"] / rates["local[1]"], 3),
            "unit": "x",
            "target": ">= 1.7",
            "note": f"CPU per million events: local[1] {cpu['local[1]']:.0f}s, local[2] {cpu['local[2]']:.0f}s",
        },
        {
            "metric": "ceiling of local[2] / local[1] on this machine: cores / local[1]'s cores busy",
            "value": round((os.cpu_count() or 1) / busy, 3),
            "unit": "x",
            "note": (
                f"local[1] kept {busy:.2f} cores busy (driver threads, Python workers, Redis beside its one task "
                "slot): a second slot can only use what is left, at the same CPU per event"
            ),
        },
        {
            "metric": "ratio standalone (2 workers × 1 core) / local[2]",
            "value": round(rates["standalone"] / rates["local[2]"], 3),
            "unit": "x",
            "note": (
                f"CPU per million events: standalone {cpu['standalone']:.0f}s (driver, master, workers, executors), "
                f"local[2] {cpu['local[2]']:.0f}s; the standalone profile on the defaults `loom cluster up` writes"
            ),
        },
    ]
    return rows
