"""``loom train --usecase churn --model churn``: point-in-time training set -> fit ->
MLflow run -> registered version @challenger -> @champion by the promotion rule."""

from __future__ import annotations

import argparse
import json

from common.compile import compile_usecase
from common.settings import paths
from common.spark import build_session
from common.spec import load_usecase
from jobs.runner import add_spark_arguments, add_usecase_argument, main_for

DESCRIPTION = "Train a model from metadata, log it to MLflow, register it and promote it by the promotion rule."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument("--model", required=True, help="model name under models: in the metadata")
    parser.add_argument("--no-register", action="store_true", help="log the run only; do not register or promote")
    parser.add_argument(
        "--from-run", metavar="RUN_ID", help="rebuild the training set from the Delta versions this run logged"
    )


def run(args: argparse.Namespace) -> int:
    from common.models.train import lineage_versions, load_lineage, train_model
    from common.tracking import configure

    plan = compile_usecase(load_usecase(args.usecase))
    plan.model(args.model)  # unknown model: a clear error before Spark starts
    work = paths()
    configure(work)
    versions = lineage_versions(load_lineage(args.from_run)) if args.from_run else None
    spark = build_session(args.profile, app_name=f"loom-train-{plan.usecase}-{args.model}")
    outcome = train_model(spark, plan, args.model, work, versions=versions, register=not args.no_register)
    print(outcome.render())
    print("  lineage: " + json.dumps(outcome.lineage["tables"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("train", __import__(__name__)))
