"""``loom cluster up|down|status``: the distributed topology on one machine, kept under ``$LOOM_HOME/cluster``.

Three engines, each the real one: a Spark standalone cluster (one master, two 1-core workers), a Redis
Cluster (three masters) and an MLflow tracking server (sqlite backend, proxied artifacts). They outlive
the command that started them, like ``loom redis start``; ``down`` stops them. ``state.json`` records
what runs (addresses and process ids): ``down`` signals only processes whose command line or working
folder is inside this folder, so a stale file never stops a stranger.

``up`` also writes ``spark/conf/spark-defaults.conf`` (exported as ``SPARK_CONF_DIR``): the cluster's own
defaults for the jobs, sized to its few cores, under the keys the ``standalone`` profile leaves to the cluster.

The Redis Cluster keeps no data across ``down``/``up`` (its nodes run without persistence, like a cache:
``loom materialize`` refills it); the MLflow store and artifacts are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from common.runtime.jvm import QUICK_KEY
from common.runtime.mlflow_server import MlflowServer, healthy
from common.runtime.processes import alive
from common.runtime.redis_cluster import CLUSTER_ENV, RedisClusterServers, cluster_state
from common.runtime.spark import read_profile
from common.runtime.spark_standalone import SparkStandalone, alive_workers

STATE_FILE = "state.json"
STOP_TIMEOUT_S = 30.0
SPARK_DEFAULTS = """\
# Written by `loom cluster up`: this cluster's own defaults for the Spark jobs pointed at it (SPARK_CONF_DIR),
# sized to its {slots} cores on one machine, as a real cluster's spark-defaults.conf sizes its own. A profile's
# keys win (spark-conf/standalone.conf leaves these to the cluster).
# Shuffle partitions, 2 per core: the stream's stateful queries keep the count of their first run (one state
# store each) for the life of their checkpoint, so it must fit the cluster from the start.
spark.sql.shuffle.partitions                 {partitions}
# Delta's state reconstruction: 50 tasks a table read by default (spark-conf/local.conf sets 2 too).
spark.databricks.delta.snapshotPartitions    {slots}
# Every job starts a driver and fresh executors (JVMs) that live for that job only, on the same few cores: the
# quick start of Loom's short local jobs (common/runtime/jvm.py), the C1 compiler and one GC thread.
spark.driver.extraJavaOptions                {jvm}
spark.executor.extraJavaOptions              {jvm}
"""


def write_spark_defaults(conf_dir: Path, slots: int) -> Path:
    """The ``spark-defaults.conf`` of a local standalone cluster of ``slots`` cores, in ``conf_dir`` (the
    folder to export as ``SPARK_CONF_DIR``); returns the folder."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    text = SPARK_DEFAULTS.format(partitions=2 * slots, slots=slots, jvm=read_profile("local")[QUICK_KEY])
    (conf_dir / "spark-defaults.conf").write_text(text)
    return conf_dir


def cluster_folder(home: Path) -> Path:
    return home / "cluster"


def environment(state: dict[str, Any]) -> dict[str, str]:
    """The variables that point Loom's jobs at the running engines (jobs also need ``--profile standalone``)."""
    return {
        "SPARK_MASTER_URL": state["spark"]["master_url"],
        "SPARK_CONF_DIR": state["spark"]["conf_dir"],  # spark-submit (pyspark's too) reads its spark-defaults.conf
        # the executors run the Python the driver names (else `python3` of the PATH, often one without Loom):
        # the workers are on this machine, so the interpreter of this installation
        "PYSPARK_PYTHON": state["spark"].get("python", sys.executable),
        "REDIS_URL": state["redis"]["url"],  # any master: the cluster client finds the others
        CLUSTER_ENV: "1",
        "MLFLOW_TRACKING_URI": state["mlflow"]["url"],
    }


def read_state(home: Path) -> dict[str, Any] | None:
    path = cluster_folder(home) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def status(home: Path) -> dict[str, bool] | None:
    """Whether each engine answers (None when ``up`` never ran or ``down`` ran last)."""
    state = read_state(home)
    if state is None:
        return None
    return {
        "spark": alive_workers(state["spark"]["ui_url"]) >= state["spark"]["workers"],
        "redis": all(cluster_state(address) == "ok" for address in state["redis"]["addresses"]),
        "mlflow": healthy(state["mlflow"]["url"]),
    }


def up(home: Path, workers: int = 2, masters: int = 3) -> dict[str, Any]:
    """Start the three engines (or return the state of those already running)."""
    state = read_state(home)
    if state is not None and all((status(home) or {}).values()):
        return state
    down(home)
    folder = cluster_folder(home)
    shutil.rmtree(folder / "redis", ignore_errors=True)  # a fresh cluster: nodes.conf names old ports
    started: list[Any] = []
    try:
        spark = SparkStandalone(directory=folder / "spark", workers=workers, stop_at_exit=False).start()
        started.append(spark)
        redis = RedisClusterServers(directory=folder / "redis", masters=masters, stop_at_exit=False).start()
        started.append(redis)
        mlflow = MlflowServer(directory=folder / "mlflow", stop_at_exit=False).start()
        started.append(mlflow)
    except BaseException:
        for engine in reversed(started):
            engine.stop()
        raise
    conf_dir = write_spark_defaults(folder / "spark" / "conf", workers * spark.cores)
    state = {
        "spark": {
            "master_url": spark.master_url,
            "conf_dir": str(conf_dir),
            "ui_url": spark.ui_url,
            "workers": workers,
            "python": sys.executable,
            "pids": [p.pid for p in spark.processes],
        },
        "redis": {"url": redis.url, "addresses": redis.addresses, "pids": [n.process.pid for n in redis.nodes]},
        "mlflow": {"url": mlflow.url, "pids": [mlflow.process.pid]},
    }
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2))
    return state


def down(home: Path, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop what ``up`` started. True if anything was running."""
    folder = cluster_folder(home)
    state = read_state(home)
    if state is None:
        return False
    pids = [pid for engine in ("spark", "redis", "mlflow") for pid in state[engine]["pids"]]
    ours = [pid for pid in pids if _runs_in(pid, folder)]
    for pid in ours:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in ours) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in ours:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    (folder / STATE_FILE).unlink(missing_ok=True)
    return bool(ours)


def _runs_in(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` is one of this folder's engines (its command line or working folder is in it)."""
    root = str(folder.resolve())
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return root in command or cwd.startswith(root)
