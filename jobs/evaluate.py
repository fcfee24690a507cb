"""``loom evaluate --usecase churn --model churn``: logged predictions (batch, stream, REST)
against the outcomes that arrived since -> metrics per model version, path and time
bucket (Delta + MLflow); then drift of the champion's features and scores against
its training set."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from jobs.runner import add_spark_arguments, add_usecase_argument, iso_time, main_for, set_up

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from common.compile.plan import Plan
    from common.settings import Paths

DESCRIPTION = (
    "Evaluate a model's logged predictions against late outcomes (metrics per version, path and time bucket) "
    "and compute drift against its training set; write Delta tables and log to MLflow."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument("--model", required=True, help="model name under models: in the metadata")
    parser.add_argument(
        "--at", type=iso_time, default=None, help="end of the drift window (ISO 8601, UTC, or now; default now)"
    )
    parser.add_argument("--version", type=int, default=None, help="drift of this version (default: @champion)")
    parser.add_argument("--no-drift", action="store_true", help="compute the metrics only")
    parser.add_argument("--no-mlflow", action="store_true", help="write the Delta tables only")
    parser.add_argument(
        "--rebuild-profile",
        action="store_true",
        help="when the version's run has no training profile (trained before training logged one), rebuild it "
        "from the run's lineage first",
    )


def run(args: argparse.Namespace) -> int:
    from common.monitoring.drift import compute_drift
    from common.monitoring.evaluate import evaluate_model

    job = set_up("evaluate", args, model=True, mlflow=True)
    spark, plan, work = job.spark, job.plan, job.work
    result = evaluate_model(spark, plan, args.model, work, log_to_mlflow=not args.no_mlflow)
    print(result.render())
    if not args.no_drift:
        if args.rebuild_profile:
            _rebuild_missing_profile(spark, plan, args.model, work, args.version)
        drift = compute_drift(
            spark, plan, args.model, work, at=args.at, version=args.version, log_to_mlflow=not args.no_mlflow
        )
        print(drift.render())
    return 0


def _rebuild_missing_profile(spark: SparkSession, plan: Plan, model: str, work: Paths, version: int | None) -> None:
    from common.models.profile import load_training_profile
    from common.monitoring.drift import resolve_version
    from common.monitoring.reference import rebuild_profile
    from common.monitoring.tracking import monitoring_client, version_run_id

    client = monitoring_client(work)
    version = resolve_version(client, model, version)
    run_id = version_run_id(client, model, version)
    if run_id is not None and load_training_profile(client, run_id) is None:
        rebuild_profile(spark, plan, model, work, version)
        print(f"rebuilt the training profile of {model} v{version} from run {run_id}")


if __name__ == "__main__":
    raise SystemExit(main_for("evaluate", __import__(__name__)))
