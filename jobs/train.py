"""``loom train --usecase churn --model churn``: point-in-time training set -> fit ->
MLflow run -> registered version @challenger -> @champion by the promotion rule."""

from __future__ import annotations

import argparse
import json

from jobs.runner import add_spark_arguments, add_usecase_argument, main_for, set_up

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

    job = set_up("train", args, model=True, mlflow=True)
    versions = lineage_versions(load_lineage(args.from_run)) if args.from_run else None  # before Spark starts
    outcome = train_model(job.spark, job.plan, args.model, job.work, versions=versions, register=not args.no_register)
    print(outcome.render())
    print("  lineage: " + json.dumps(outcome.lineage["tables"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("train", __import__(__name__)))
