"""``loom audit-pii --usecase churn [--sample N]``: search every store for the raw PII of sampled
people (taken from the landing files); report each hit with its location; exit 1 on any hit."""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.runner import add_spark_arguments, add_usecase_argument, main_for, set_up

DESCRIPTION = "Search Delta (all versions on disk), Redis, MLflow and job logs for raw PII; exit 1 on any hit."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument("--sample", type=int, default=20, help="how many people to sample (default 20)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the sample (default 7)")
    parser.add_argument(
        "--entity", dest="entities", action="append", default=[], help="also audit this entity key (repeatable)"
    )
    parser.add_argument(
        "--logs",
        type=Path,
        action="append",
        default=[],
        help="job log file or folder to scan (repeatable; default $LOOM_HOME/logs if it exists)",
    )
    parser.add_argument(
        "--landing", type=Path, default=None, help="landing root (default $LOOM_HOME/landing/<usecase>)"
    )
    parser.add_argument("--no-redis", action="store_true", help="do not scan Redis")


def run(args: argparse.Namespace) -> int:
    from common.errors import ConfigError
    from common.privacy_lifecycle.audit import audit
    from common.runtime.redis_server import redis_url

    if args.sample < 0:
        raise ConfigError(f"--sample {args.sample} is negative. Fix: pass 0 or more")
    job = set_up("audit-pii", args)
    url = None if args.no_redis else redis_url(job.work.home)
    report = audit(
        job.spark,
        job.spec,
        job.work,
        redis_url=url,
        sample=args.sample,
        entities=args.entities,
        logs=args.logs,
        landing=args.landing,
        seed=args.seed,
    )
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main_for("audit-pii", __import__(__name__)))
