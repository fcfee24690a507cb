"""``loom materialize --usecase churn [--group G] [--at T]``: offline feature history -> online store.

Publishes, per online feature group, each entity's newest vector as of ``--at`` (default now)
from the Delta history (written by ``loom backfill``) into Redis, through the streaming job's
writer and its event-time guard: after a backfill, REST and stream scoring see the entities at
once, without waiting for the stream. The online store is found or started as by every job
(``REDIS_URL``, else the local server of ``$LOOM_HOME/redis``).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from common.compile import compile_usecase
from common.features.publish import materialize, materialize_groups, render
from common.runtime.redis_server import describe, redis_url
from common.runtime.spark import build_session
from common.settings import paths
from common.spec import load_usecase
from jobs.runner import add_spark_arguments, add_usecase_argument, iso_time, main_for

DESCRIPTION = "Publish the offline feature history as of a time (default now) into the online store (Redis)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument("--group", action="append", help="feature group (repeatable; default every online group)")
    parser.add_argument(
        "--at",
        type=iso_time,
        default=None,
        help="publish the vectors as of this time, e.g. 2026-01-15T00:00:00Z (default now)",
    )


def run(args: argparse.Namespace) -> int:
    plan = compile_usecase(load_usecase(args.usecase))
    groups = [g.name for g in materialize_groups(plan, args.group)]  # a clear error before Spark starts
    at = args.at or datetime.now(UTC)
    work = paths()
    spark = build_session(args.profile, app_name=f"loom-materialize-{plan.usecase}")
    url = redis_url(work.home)
    print(f"online store: {describe(url)}")
    print(render(materialize(spark, work, plan, at, url, groups)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("materialize", __import__(__name__)))
