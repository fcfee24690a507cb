"""One run of the ``scaleout`` bench, in a process of its own, so each Spark master gets a fresh JVM.

``python -m bench.scaleout_run HOME PROFILE CONF FILES [PID ...]``: the whole catch-up (:func:`bench.catch_up.
catch_up`: ingest, features, triggers scored with churn@champion) over ``HOME``'s landing files, with a
throwaway Redis of this process; ``CONF`` is a JSON object of Spark settings over the profile's
(``spark.master`` for the local runs; the ``standalone`` profile takes its master from ``$SPARK_MASTER_URL``);
the champion comes from ``$MLFLOW_TRACKING_URI``. It writes ``HOME/result.json``: the parts' seconds and
counts, the CPU seconds of the timed parts and the executors the application had. CPU time is that of this
process's tree (driver JVM, Python workers, Redis) and of the trees of ``PID``s (a standalone cluster's master
and workers, whose executors run the tasks).

``python -m bench.scaleout_run --prepare HOME END``: train and register churn@champion in ``HOME``'s own
MLflow store, on training data that ends on ``END`` (an ISO date), where the runs' event log begins.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.batch_log import captured
from bench.catch_up import LOGGERS, PARTS, catch_up, prepare_champion

TRAIN_CUSTOMERS, TRAIN_DAYS = 500, 8  # the champion's training data (bench_proactive's)


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def tree_cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds of ``roots`` and all their descendants (reaped children's included)."""
    parents: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            parents[int(entry)], stats[int(entry)] = int(fields[1]), fields
    members = set(roots) & set(stats)
    grew = True
    while grew:
        grown = {pid for pid, parent in parents.items() if parent in members} | members
        grew, members = grown != members, grown
    # fields after the name: state, ppid, ..., utime (index 11), stime, cutime, cstime
    ticks = sum(sum(int(v) for v in stats[pid][11:15]) for pid in members)
    return ticks / os.sysconf("SC_CLK_TCK")


def prepare(home: str, end: str) -> int:
    """churn@champion in ``home``'s MLflow store (a local[2] session; not timed)."""
    from datetime import date

    from common.compile import compile_usecase
    from common.runtime.spark import build_session
    from common.settings import Paths
    from common.spec import load_usecase

    plan = compile_usecase(load_usecase("churn"))
    spark = build_session("local", app_name="loom-bench-scaleout-champion")
    try:
        outcome, _ = prepare_champion(
            spark, plan, Paths(Path(home)), TRAIN_CUSTOMERS, TRAIN_DAYS, date.fromisoformat(end)
        )
    finally:
        spark.stop()
    print(f"churn v{outcome.version}: {outcome.decision}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--prepare"]:
        return prepare(*argv[1:])
    from common.compile import compile_usecase
    from common.runtime.redis_server import RedisServer
    from common.runtime.spark import build_session
    from common.settings import Paths
    from common.spec import load_usecase

    home, profile, conf, files, *pids = argv
    overrides = json.loads(conf)
    plan = compile_usecase(load_usecase("churn"))
    work = Paths(Path(home))
    spark = build_session(profile, app_name="loom-bench-scaleout", overrides=overrides)
    roots = [os.getpid(), *(int(pid) for pid in pids)]
    try:
        with RedisServer() as redis, captured(LOGGERS) as capture:
            cpu_before = tree_cpu_seconds(roots)
            caught: dict[str, Any] = catch_up(spark, plan, work, redis.url, capture, int(files), parts=PARTS)
            caught["cpu_s"] = tree_cpu_seconds(roots) - cpu_before
        context = spark.sparkContext
        caught["master"] = context.master
        caught["executors"] = context._jsc.sc().getExecutorMemoryStatus().size() - (
            0 if context.master.startswith("local") else 1  # the driver's block manager is listed too
        )
        caught["shuffle_partitions"] = spark.conf.get("spark.sql.shuffle.partitions")
    finally:
        spark.stop()
    Path(home, "result.json").write_text(json.dumps(caught, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
