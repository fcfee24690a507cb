"""``loom score --usecase churn --model churn@champion --at <time>``: batch scoring
of features as of a time, through mlflow.pyfunc.spark_udf, into a predictions Delta table."""

from __future__ import annotations

import argparse

from jobs.runner import add_spark_arguments, add_usecase_argument, iso_time, main_for, set_up

DESCRIPTION = "Score entities with a registered model as of a time; write the predictions Delta table."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument("--model", required=True, help="churn@champion, churn@challenger, churn/3 (version) or churn")
    parser.add_argument(
        "--at",
        required=True,
        type=iso_time,
        action="append",
        help="features as of this time (ISO 8601, UTC), or now; repeat it to score several times in one job "
        "(a backtest, or daily runs caught up)",
    )
    parser.add_argument("--show", type=int, default=5, help="print this many of the top scores (default 5)")


def run(args: argparse.Namespace) -> int:
    from pyspark.sql import functions as F

    from common.models.scoring import resolve_model, score_batch

    job = set_up("score", args, compiled=True, mlflow=True)
    resolve_model(args.model)  # a clear error before Spark starts
    ref, written, path = score_batch(job.spark, job.plan, args.model, args.at, job.work)
    count = written.count()
    times = ", ".join(t.isoformat() for t in sorted(set(args.at)))
    print(f"scored {count} entity rows with {ref} as of {times} -> {path}")
    if args.show:
        for row in written.orderBy(F.col("score").desc()).limit(args.show).collect():
            print(f"  {row[0]}  {row['score']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("score", __import__(__name__)))
