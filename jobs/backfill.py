"""``loom backfill --usecase churn``: bronze -> offline feature history (Delta)."""

from __future__ import annotations

import argparse

from common.compile import compile_usecase
from common.errors import ConfigError
from common.features.backfill import backfill
from common.runtime.spark import build_session
from common.settings import paths
from common.spec import load_usecase
from jobs.runner import add_spark_arguments, add_usecase_argument, iso_date, main_for

DESCRIPTION = "Compute feature history from bronze into the Delta offline store (incremental, idempotent)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument("--group", action="append", help="feature group (repeatable; default all)")
    parser.add_argument("--start", type=iso_date, help="first date to recompute (YYYY-MM-DD); default: incremental")
    parser.add_argument("--end", type=iso_date, help="first date NOT to recompute (YYYY-MM-DD)")


def run(args: argparse.Namespace) -> int:
    plan = compile_usecase(load_usecase(args.usecase))
    unknown = [g for g in args.group or [] if g not in plan.groups]
    if unknown:
        raise ConfigError(f"unknown feature group(s) {unknown}. Fix: use one of {sorted(plan.groups)}")
    spark = build_session(args.profile, app_name=f"loom-backfill-{plan.usecase}")
    reports = backfill(spark, paths(), plan, args.group, args.start, args.end)
    print(f"{'group':<12} {'range':<26} {'rows':>10} {'entities':>9}  table")
    for r in reports:
        print(f"{r.group:<12} {r.span:<26} {r.rows:>10} {r.entities:>9}  {r.table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("backfill", __import__(__name__)))
