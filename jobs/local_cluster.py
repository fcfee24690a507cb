"""``loom cluster up|down|status``: a Spark standalone cluster, a Redis Cluster and an MLflow tracking server,
all on 127.0.0.1, kept under $LOOM_HOME/cluster, for trying the distributed topology on one machine.

``up`` prints the environment variables that point the jobs at them (and the jobs take ``--profile
standalone``); README.md, "Running on a cluster", says what each engine is in production.
"""

from __future__ import annotations

import argparse

from common.runtime.local_cluster import down, environment, read_state, status, up
from common.settings import paths
from jobs.runner import main_for

DESCRIPTION = (
    "Start, stop or show a local Spark standalone cluster (2 workers), Redis Cluster (3 masters) and MLflow "
    "tracking server, kept under $LOOM_HOME/cluster."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--workers", type=int, default=2, help="Spark workers of 1 core each (up; default 2)")


def run(args: argparse.Namespace) -> int:
    home = paths().home
    if args.action == "up":
        if args.workers < 1:
            from common.errors import ConfigError

            raise ConfigError(f"--workers {args.workers}: at least 1. Fix: pass --workers 1 or more")
        state = up(home, workers=args.workers)
        _show(state)
        print("# point the jobs at it (and pass --profile standalone to Spark jobs):")
        for name, value in environment(state).items():
            print(f"export {name}={value}")
        return 0
    if args.action == "down":
        print("cluster: stopped" if down(home) else "cluster: was not running")
        return 0
    health = status(home)
    if health is None:
        print("cluster: not running")
        return 1
    _show(read_state(home), health)
    return 0 if all(health.values()) else 1


def _show(state: dict, health: dict[str, bool] | None = None) -> None:
    def mark(engine: str) -> str:
        return "" if health is None else (" (up)" if health[engine] else " (NOT answering)")

    spark, redis, mlflow = state["spark"], state["redis"], state["mlflow"]
    print(f"spark: {spark['master_url']}, {spark['workers']} workers, UI {spark['ui_url']}{mark('spark')}")
    print(f"redis: cluster of {len(redis['addresses'])} masters at {', '.join(redis['addresses'])}{mark('redis')}")
    print(f"mlflow: {mlflow['url']}{mark('mlflow')}")


if __name__ == "__main__":
    raise SystemExit(main_for("cluster", __import__(__name__)))
