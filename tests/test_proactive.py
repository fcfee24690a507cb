"""Proactive scoring end to end: triggers over a bronze event stream, scored with
the registered churn model, written exactly once; kill -9 and hot redeploy.

A small lake (300 customers, 3 days) whose events were ingested in many small
batches, so the trigger query runs many micro-batches. The model registry is
the one of ``trained_churn`` (linked into each work folder).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, date
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import mlflow
import pytest
from pyspark.sql import functions as F

from common.features.offline import table_exists
from common.models import registry
from common.models.scoring import predictions_path, score_batch
from common.settings import Paths

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["customer_id", "trigger", "firing_ts", "event_id", "score", "model_name", "model_version", "action"]


def _link_registry(home: Path, registry_home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "mlflow.db").symlink_to(registry_home / "mlflow.db")


@pytest.fixture(scope="module")
def stream_lake(spark, trained_churn, tmp_path_factory):
    from common.features.backfill import backfill
    from common.generate import generate_landing
    from common.generate.options import demo_options
    from common.ingest.stream import ingest_source

    home = tmp_path_factory.mktemp("stream-lake")
    _link_registry(home, trained_churn.work.home)
    work = Paths(home)
    spec, plan = trained_churn.spec, trained_churn.plan
    generate_landing(spec, work, demo_options(date(2026, 1, 15), customers=300, days=3))
    ingest_source(spark, spec, "customers", work)
    ingest_source(spark, spec, "events", work, max_files_per_trigger=8)  # many bronze versions
    backfill(spark, work, plan)
    return work


def _copy_lake(source: Paths, home: Path, registry_home: Path) -> Paths:
    _link_registry(home, registry_home)
    shutil.copytree(source.lake / "churn" / "bronze", home / "lake" / "churn" / "bronze")
    return Paths(home)


def _redis_db(url: str, db: int) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path=f"/{db}"))


def _stream_command(work: Paths, redis: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, LOOM_HOME=str(work.home), REDIS_URL=redis, PYSPARK_PYTHON=sys.executable)
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "jobs.stream", "--usecase", "churn", "--available-now", "--only", "triggers"]
    return command + ["--max-files-per-trigger", "1"], env


def _run_to_end(work: Paths, redis: str) -> None:
    command, env = _stream_command(work, redis)
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def _predictions(spark, work: Paths):
    return spark.read.format("delta").load(predictions_path(work, "churn", "stream"))


def _latest_in_redis(url: str) -> dict[str, dict[bytes, bytes]]:
    from common.redis_server import connect

    client = connect(url)
    try:
        return {k.decode(): client.hgetall(k) for k in client.scan_iter(match="loom:churn:v1:*:prediction:*")}
    finally:
        client.close()


@pytest.fixture(scope="module")
def clean_run(spark, stream_lake, trained_churn, redis_url, tmp_path_factory):
    from common.redis_server import connect

    url = _redis_db(redis_url, 3)
    connect(url).flushdb()
    work = _copy_lake(stream_lake, tmp_path_factory.mktemp("clean-run"), trained_churn.work.home)
    _run_to_end(work, url)
    return work, url


def test_firings_are_scored_with_features_models_and_actions(spark, clean_run, trained_churn):
    work, url = clean_run
    rows = _predictions(spark, work).collect()
    assert len(rows) >= 10
    assert {(r["model_name"], r["model_version"]) for r in rows} == {("churn", trained_churn.outcome.version)}
    assert all(r["score"] is not None and 0 <= r["score"] <= 1 for r in rows)
    assert all(r["features"]["support_calls_7d"] >= 1 for r in rows)  # the firing call itself counts
    actions = spark.read.format("delta").load(work.table("churn", "predictions", "actions"))
    assert actions.count() == sum(1 for r in rows if r["score"] >= 0.6)
    latest = _latest_in_redis(url)
    assert len(latest) == len({r["customer_id"] for r in rows})


def test_kill_dash_nine_five_times_equals_a_clean_run(
    spark, clean_run, stream_lake, trained_churn, redis_url, tmp_path
):
    from common.redis_server import connect

    clean_work, clean_url = clean_run
    url = _redis_db(redis_url, 4)
    connect(url).flushdb()
    work = _copy_lake(stream_lake, tmp_path / "killed", trained_churn.work.home)
    command, env = _stream_command(work, url)
    rng = random.Random(5)
    for _ in range(5):
        process = subprocess.Popen(
            command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(rng.uniform(12, 35))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the driver and its JVM, like a lost container
        process.wait()
    _run_to_end(work, url)
    killed = _predictions(spark, work).select(*COLUMNS)
    clean = _predictions(spark, clean_work).select(*COLUMNS)
    assert killed.count() == clean.count()
    assert killed.exceptAll(clean).count() == 0 and clean.exceptAll(killed).count() == 0
    assert killed.groupBy("customer_id", "trigger", "event_id").count().where("count > 1").count() == 0
    assert _latest_in_redis(url) == _latest_in_redis(clean_url)


def test_stream_scores_equal_batch_scoring_at_the_same_time(spark, clean_run, stream_lake, trained_churn):
    work, _ = clean_run
    sample = _predictions(spark, work).orderBy("firing_ts", "customer_id").limit(3).collect()
    for row in sample:
        entity = spark.createDataFrame([(row["customer_id"],)], "customer_id string")
        at = row["firing_ts"].replace(tzinfo=UTC)
        model = f"churn/{row['model_version']}"
        _, written, _ = score_batch(spark, trained_churn.plan, model, at, stream_lake, entity)
        assert written.first()["score"] == pytest.approx(row["score"], abs=1e-9)


def test_champion_moves_during_a_run_without_restart(spark, clean_run, stream_lake, trained_churn, redis_url, tmp_path):
    from common.compile import compile_usecase
    from common.spec import load_usecase
    from common.triggers.stream import start_trigger_streams

    clean_work, _ = clean_run
    work = _copy_lake(stream_lake, tmp_path / "redeploy", trained_churn.work.home)
    client = registry.client(trained_churn.work)
    before = registry.version_by_alias("churn", "champion", client)
    new = mlflow.register_model(f"runs:/{trained_churn.outcome.run_id}/model", "churn")
    plan = compile_usecase(load_usecase("churn"))
    (query,) = start_trigger_streams(
        spark, work, plan, _redis_db(redis_url, 5), interval="1 second", max_files_per_trigger=1
    )
    try:
        deadline = time.monotonic() + 300
        path = predictions_path(work, "churn", "stream")
        while time.monotonic() < deadline and not (table_exists(spark, path) and _predictions(spark, work).count()):
            assert query.exception() is None
            time.sleep(1)
        registry.promote("churn", int(new.version), "redeploy test", registry.client(trained_churn.work))
        query.processAllAvailable()
    finally:
        query.stop()
        registry.promote("churn", before, "restore after redeploy test", registry.client(trained_churn.work))
    rows = _predictions(spark, work)
    by_batch = rows.groupBy("batch_id").agg(F.min("model_version").alias("lo"), F.max("model_version").alias("hi"))
    versions = [(r["lo"], r["hi"]) for r in by_batch.orderBy("batch_id").collect()]
    assert versions[0] == (before, before) and versions[-1] == (int(new.version), int(new.version))
    flat = [v for pair in versions for v in pair]
    assert flat == sorted(flat)  # one switch, never back
    # nothing lost, nothing doubled: the same firings as the clean run
    keys = ["customer_id", "trigger", "event_id"]
    assert rows.select(*keys).exceptAll(_predictions(spark, clean_work).select(*keys)).count() == 0
    assert rows.count() == _predictions(spark, clean_work).count()
