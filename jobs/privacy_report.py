"""``loom privacy-report --usecase churn --model churn``: fit the model on raw PII features (a sandbox,
never registered) and on the protected ones; log both metrics and their difference to MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.compile import compile_usecase
from common.settings import paths
from common.spark import build_session
from common.spec import load_usecase
from jobs.runner import add_spark_arguments, add_usecase_argument, main_for

DESCRIPTION = "Measure what the privacy policies cost a model: raw vs protected PII features, logged to MLflow."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument("--model", required=True, help="model name under models: in the metadata")
    parser.add_argument(
        "--landing", type=Path, default=None, help="landing root (default $LOOM_HOME/landing/<usecase>)"
    )
    parser.add_argument(
        "--max-cost",
        type=float,
        default=None,
        help="exit 1 when the protected model is worse than the raw one by more than this on the promotion metric",
    )


def run(args: argparse.Namespace) -> int:
    from common.privacy.efficacy import compared_columns, privacy_report
    from common.tracking import configure

    plan = compile_usecase(load_usecase(args.usecase))
    compared_columns(plan, args.model)  # unknown model or nothing to compare: a clear error before Spark starts
    work = paths()
    configure(work)
    spark = build_session(args.profile, app_name=f"loom-privacy-report-{plan.usecase}-{args.model}")
    report = privacy_report(spark, plan, args.model, work, landing=args.landing)
    print(report.render())
    if args.max_cost is not None and report.cost > args.max_cost:
        print(f"privacy-report: the cost {report.cost:+.4f} exceeds --max-cost {args.max_cost:g}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("privacy-report", __import__(__name__)))
