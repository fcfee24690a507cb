"""``loom forget --usecase churn --entity C00000042``: remove one person from bronze, quarantine,
feature history and tiles, predictions and Redis; VACUUM; report what was removed and what is left."""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.runner import add_spark_arguments, add_usecase_argument, main_for, set_up

DESCRIPTION = "Right to be forgotten: delete one entity from every Delta table and Redis, VACUUM, report counts."


# Delta's default delta.deletedFileRetentionDuration (7 days); the same value as
# common.privacy_lifecycle.forget.DEFAULT_RETENTION_HOURS, kept here so `loom --help` does not import Spark.
DEFAULT_RETENTION_HOURS = 168.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument("--entity", required=True, help="the entity key to forget, e.g. C00000042")
    parser.add_argument("--entity-type", default=None, help="entity name when the use case has several")
    parser.add_argument(
        "--vacuum-retention-hours",
        type=float,
        default=DEFAULT_RETENTION_HOURS,
        help=f"VACUUM retention (default {DEFAULT_RETENTION_HOURS:g}, Delta's default); files removed more "
        "recently stay until a later run. Below the default, Delta's safety check is off for that VACUUM only",
    )
    parser.add_argument(
        "--landing", type=Path, default=None, help="landing root (default $LOOM_HOME/landing/<usecase>)"
    )
    parser.add_argument("--no-redis", action="store_true", help="do not touch Redis")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 unless nothing is left (no pending file, every table searchable)"
    )


def run(args: argparse.Namespace) -> int:
    from common.privacy_lifecycle.forget import forget
    from common.runtime.redis_server import redis_url

    job = set_up("forget", args)
    url = None if args.no_redis else redis_url(job.work.home)
    report = forget(
        job.spark,
        job.spec,
        job.work,
        args.entity,
        redis_url=url,
        entity_type=args.entity_type,
        retention_hours=args.vacuum_retention_hours,
        landing=args.landing,
    )
    print(report.render())
    return 1 if args.strict and not report.complete else 0


if __name__ == "__main__":
    raise SystemExit(main_for("forget", __import__(__name__)))
