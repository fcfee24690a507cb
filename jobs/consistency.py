"""``loom consistency --usecase churn``: batch recompute vs the online store; exit 1 on any mismatch."""

from __future__ import annotations

import argparse

from common.compile import compile_usecase
from common.features.consistency import check_group
from common.features.online_sink import open_store
from common.runtime.redis_server import redis_url
from common.runtime.spark import build_session
from common.settings import paths
from common.spec import load_usecase
from jobs.runner import add_spark_arguments, add_usecase_argument, main_for

DESCRIPTION = "Recompute every entity's features in batch and compare them with Redis (exit 1 on mismatch)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument("--tolerance", type=float, default=1e-9, help="relative tolerance (default 1e-9)")


def run(args: argparse.Namespace) -> int:
    plan = compile_usecase(load_usecase(args.usecase))
    work = paths()
    spark = build_session(args.profile, app_name=f"loom-consistency-{plan.usecase}")
    groups = [g for g in plan.groups.values() if g.online]
    store = open_store(groups, redis_url(work.home))
    failed = False
    try:
        for group in groups:
            report = check_group(spark, work, group, store, args.tolerance)
            failed |= not report.ok
            print(
                f"group {group.name}: {report.entities_checked} entities checked, "
                f"{report.entities_mismatched} mismatched, {report.missing_online} missing online, "
                f"{report.behind} behind the newest batch event"
            )
            print(f"  {'feature':<24} {'mismatches':>10} {'max |diff|':>12}")
            for name, stats in report.features.items():
                print(f"  {name:<24} {stats.mismatches:>10} {stats.max_abs_diff:>12.3g}")
            for example in report.examples:
                print(f"  e.g. {example}")
    finally:
        store.close()
    print("consistency: FAILED" if failed else "consistency: OK")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main_for("consistency", __import__(__name__)))
