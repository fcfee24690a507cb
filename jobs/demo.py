"""``loom demo``: the whole lifecycle built so far, on embedded defaults.

Each step is a real job over real stores; the demo only strings them
together in one process so one Spark session and one Redis serve them all.
"""

from __future__ import annotations

import argparse
import time

from common.redis_server import connect, describe, redis_url
from common.settings import paths
from common.smoke import run_smoke
from common.spark import build_session
from common.tracking import tracking_uri
from jobs.runner import add_spark_arguments, main_for

DESCRIPTION = "Run the end-to-end demo: stores smoke test, then every lifecycle step built so far."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spark_arguments(parser)
    parser.add_argument("--usecase", default="churn", help="use case to demo (default churn)")


def step(title: str):
    print(f"\n== {title}", flush=True)
    return time.monotonic()


def run(args: argparse.Namespace) -> int:
    work = paths()
    started = step("stores: Delta, Redis, MLflow")
    spark = build_session(args.profile, app_name="loom-demo")
    url = redis_url(work.home)
    client = connect(url)
    report = run_smoke(spark, client, url, work)
    print(f"delta round trip ok: {report.delta_versions} versions ({time.monotonic() - started:.1f}s)")

    print("\n== where everything lives")
    print(f"delta tables:  {work.lake}")
    print(f"redis server:  {describe(url)}")
    print(f"mlflow store:  {tracking_uri(work)} (artifacts {work.mlflow_artifacts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("demo", __import__(__name__)))
