"""``loom stream --usecase churn``: landing -> bronze -> features -> Redis + Delta, continuously."""

from __future__ import annotations

import argparse

from common.compile import compile_usecase
from common.ingest.report import render_reports
from common.ingest.stream import stop_on_signals
from common.pipeline import PARTS, catch_up, run_continuously
from common.runtime.python_daemon import set_preload
from common.runtime.redis_server import describe, redis_url
from common.runtime.spark import build_session
from common.settings import paths
from common.spec import load_usecase
from jobs.runner import add_spark_arguments, add_usecase_argument, main_for

DESCRIPTION = (
    "Run the streaming pipeline: ingest, compute features (Redis + Delta history), evaluate triggers and score "
    "them with the model's @champion (predictions Delta + Redis)."
)


# What the stream's Python workers import: the online writer and the tiles' fold; MLflow, the pyfunc and
# scikit-learn (the estimators' library) for scoring
WORKER_MODULES = ("common.online.materialize", "common.features.tile_state")
SCORING_MODULES = ("mlflow.pyfunc", "common.models.pyfunc", "joblib", "sklearn.pipeline")


def preloaded_modules(plan, parts) -> tuple[str, ...]:
    """The modules Spark's Python daemons import once for all their workers."""
    return WORKER_MODULES + (SCORING_MODULES if plan.triggers and "triggers" in parts else ())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument(
        "--available-now", action="store_true", help="process what has landed, in micro-batches, then stop"
    )
    parser.add_argument("--trigger-interval", default="5 seconds", help="micro-batch interval (default 5 seconds)")
    parser.add_argument("--max-files-per-trigger", type=int, default=None, help="landing files per micro-batch")
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="run only these parts (repeatable; default all: ingest, features, triggers)",
    )
    parser.add_argument(
        "--model-refresh",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="check the registry for a moved alias at most this often (default 0: every micro-batch)",
    )


def run(args: argparse.Namespace) -> int:
    plan = compile_usecase(load_usecase(args.usecase))
    work = paths()
    # before the JVM starts: its Python daemons inherit the environment (common.runtime.python_daemon)
    set_preload(list(preloaded_modules(plan, args.only or PARTS)))
    spark = build_session(args.profile, app_name=f"loom-stream-{plan.usecase}")
    url = redis_url(work.home)
    print(f"online store: {describe(url)}")
    if args.available_now:
        reports = catch_up(
            spark,
            plan,
            work,
            url,
            max_files_per_trigger=args.max_files_per_trigger,
            model_refresh_s=args.model_refresh,
            parts=args.only or PARTS,
        )
    else:
        with stop_on_signals() as stop:
            reports = list(
                run_continuously(
                    spark,
                    plan,
                    work,
                    url,
                    stop,
                    interval=args.trigger_interval,
                    max_files_per_trigger=args.max_files_per_trigger,
                    model_refresh_s=args.model_refresh,
                    parts=args.only or PARTS,
                ).values()
            )
    print(render_reports(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("stream", __import__(__name__)))
