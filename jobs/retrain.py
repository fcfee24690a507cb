"""``loom retrain --usecase churn --model churn [--force]``: apply the retraining policy
(drift, a metric below its floor, the schedule) and, when due, train a challenger that
the promotion rule may promote; prints why it retrained or not."""

from __future__ import annotations

import argparse

from jobs.runner import add_spark_arguments, add_usecase_argument, iso_time, main_for, set_up

DESCRIPTION = (
    "Retrain a model when its policy says so (drift, metric below a floor, schedule, or --force): "
    "train a challenger, register it and promote it by the promotion rule."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument("--model", required=True, help="model name under models: in the metadata")
    parser.add_argument("--force", action="store_true", help="retrain whatever the policy says")
    parser.add_argument("--dry-run", action="store_true", help="print the decision; do not train")
    parser.add_argument(
        "--at", type=iso_time, default=None, help="decide as of this time (ISO 8601, UTC, or now; default now)"
    )


def run(args: argparse.Namespace) -> int:
    from common.monitoring.retrain import retrain

    job = set_up("retrain", args, model=True, mlflow=True)
    result = retrain(job.spark, job.plan, args.model, job.work, at=args.at, force=args.force, dry_run=args.dry_run)
    print(result.render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("retrain", __import__(__name__)))
