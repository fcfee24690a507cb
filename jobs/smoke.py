"""``loom smoke``: prove Delta, Redis and MLflow work here, and say where they live."""

from __future__ import annotations

import argparse

from common.runtime.redis_server import connect, redis_url
from common.runtime.smoke import run_smoke
from common.runtime.spark import build_session
from common.settings import paths
from jobs.runner import add_spark_arguments, main_for

DESCRIPTION = "Round-trip a Delta table (time travel, MERGE), a Redis key and an MLflow model."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spark_arguments(parser)


def run(args: argparse.Namespace) -> int:
    work = paths()
    spark = build_session(args.profile, app_name="loom-smoke")
    url = redis_url(work.home)
    report = run_smoke(spark, connect(url), url, work)
    print(f"delta:  {report.delta_table} ({report.delta_versions} versions: write, overwrite, merge)")
    print(f"redis:  {report.redis_url}")
    print(f"mlflow: {report.mlflow_uri} (model {report.model_uri})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("smoke", __import__(__name__)))
