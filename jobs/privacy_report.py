"""``loom privacy-report --usecase churn --model churn``: fit the model on raw PII features (a sandbox,
never registered) and on the protected ones; log both metrics and their difference to MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.runner import add_spark_arguments, add_usecase_argument, main_for, set_up

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
    from common.privacy_lifecycle.efficacy import compared_columns, privacy_report

    job = set_up("privacy-report", args, model=True, mlflow=True)
    compared_columns(job.plan, args.model)  # nothing to compare: a clear error before Spark starts
    report = privacy_report(job.spark, job.plan, args.model, job.work, landing=args.landing)
    print(report.render())
    if args.max_cost is not None and report.cost > args.max_cost:
        print(f"privacy-report: the cost {report.cost:+.4f} exceeds --max-cost {args.max_cost:g}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("privacy-report", __import__(__name__)))
