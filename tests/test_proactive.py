"""Proactive scoring end to end: triggers over a bronze event stream, scored with
the registered churn model, written exactly once; kill -9 and hot redeploy.

A small lake (300 customers, 3 days of hourly event files) whose events were
ingested in batches of 24 landing files, so bronze holds 7 data files and the
trigger query, reading one file per micro-batch, runs 7 micro-batches, 6 of them
with firings. The model registry is the one of ``trained_churn`` (linked into
each work folder).

Time: each micro-batch of the trigger query costs seconds of fixed overhead (state
store, features as of the firing, model UDF, Delta commits) and each ``loom stream``
process a JVM start and a model load; the lake is processed three times (clean run,
kill -9, redeploy). So this file's duration is set by the number of micro-batches
and of processes, not by the number of rows. 7 micro-batches (19 when events were
ingested 8 landing files at a time) are still several per run, with firings in
most: room for three kills at different batches and a redeploy between batches.
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

from common.lake.paths import predictions_path
from common.models import registry
from common.models.scoring import score_batch
from common.settings import Paths
from common.triggers.operator import STATE_LAYOUT
from tests.conftest import quick_jvm_env

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["customer_id", "trigger", "firing_ts", "event_id", "score", "model_name", "model_version", "action"]
INGEST_FILES_PER_BATCH = 24  # 73 hourly landing files -> 4 bronze commits, 7 data files
TRIGGER_FILES_PER_BATCH = 1  # one bronze file per trigger micro-batch: 7 micro-batches

# Where a trigger micro-batch can be when the process dies, read from its files (see QueryFiles).
PLANNED = "offset logged, nothing else written"
STATE_WRITTEN = "state store written, no Delta commit yet"
DELTA_COMMITTED = "predictions committed, checkpoint commit missing"
COMMITTED = "committed"


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
    ingest_source(spark, spec, "events", work, max_files_per_trigger=INGEST_FILES_PER_BATCH)  # several bronze files
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
    # the quick JVM of short jobs: each of these processes runs a few micro-batches, and the kill test starts four
    env = dict(os.environ, LOOM_HOME=str(work.home), REDIS_URL=redis, PYSPARK_PYTHON=sys.executable, **quick_jvm_env())
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "jobs.stream", "--usecase", "churn", "--available-now", "--only", "triggers"]
    return command + ["--max-files-per-trigger", str(TRIGGER_FILES_PER_BATCH)], env


def _run_to_end(work: Paths, redis: str) -> None:
    command, env = _stream_command(work, redis)
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def _catch_up(spark, plan, work: Paths, redis: str) -> None:
    """What ``_stream_command`` runs, in this process: no JVM start, no second model load."""
    from common.pipeline import catch_up

    catch_up(spark, plan, work, redis, max_files_per_trigger=TRIGGER_FILES_PER_BATCH, parts=("triggers",))


def _predictions(spark, work: Paths):
    return spark.read.format("delta").load(predictions_path(work, "churn", "stream"))


def _actions(spark, work: Paths):
    return spark.read.format("delta").load(work.table("churn", "predictions", "actions"))


def _latest_in_redis(url: str) -> dict[str, dict[bytes, bytes]]:
    from common.runtime.redis_server import connect

    client = connect(url)
    try:
        return {k.decode(): client.hgetall(k) for k in client.scan_iter(match="loom:churn:v1:*:prediction:*")}
    finally:
        client.close()


def _numbered(folder: Path) -> set[int]:
    """Batch ids of a checkpoint log folder (``offsets``, ``commits``); temporary files start with a dot."""
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()


class QueryFiles:
    """Where the trigger query of a work folder stands, from its files alone (another process runs it).

    Per micro-batch N, Spark and the firing handler write, in this order: ``offsets/N``
    (the batch is planned), ``state/0/<partition>/<N+1>.changelog`` (the trigger operator's
    state in RocksDB; a snapshot ``<N+1>.zip`` may follow later, in the background), a predictions Delta commit (then actions and Redis), and last ``commits/N``.
    Files appear whole (written, then renamed). A predictions commit newer than
    ``offsets/N`` is batch N's, since batch N-1 committed before N was planned; this
    does not rely on the Delta transaction ids whose effect the kill test checks.
    """

    def __init__(self, work: Paths) -> None:
        self.checkpoint = Path(work.checkpoint("churn", f"triggers_events_{STATE_LAYOUT}"))
        self.delta_log = Path(predictions_path(work, "churn", "stream")) / "_delta_log"

    def delta_commits(self) -> list[Path]:
        """The commit files of the predictions table (none before its first write)."""
        return sorted(self.delta_log.glob("*.json")) if self.delta_log.is_dir() else []

    def newest(self) -> tuple[int, str] | None:
        """(newest planned batch, how far it got), or None before the first batch is planned."""
        offsets = _numbered(self.checkpoint / "offsets")
        if not offsets:
            return None
        batch = max(offsets)
        if batch in _numbered(self.checkpoint / "commits"):
            return batch, COMMITTED
        planned = (self.checkpoint / "offsets" / str(batch)).stat().st_mtime_ns
        if any(commit.stat().st_mtime_ns >= planned for commit in self.delta_commits()):
            return batch, DELTA_COMMITTED
        if any((p / f"{batch + 1}.changelog").exists() for p in (self.checkpoint / "state" / "0").glob("*")):
            return batch, STATE_WRITTEN
        return batch, PLANNED


def _kill_at(
    command: list[str], env: dict[str, str], files: QueryFiles, point: str, batches: list[int], log: Path
) -> tuple[tuple[int, str], tuple[int, str] | None]:
    """Start the stream, SIGKILL it (driver and JVM) as soon as one of ``batches`` is at ``point``.

    Only batches planned by this process count: the one a previous kill left uncommitted
    shows its old state until the restart replays it. Returns (what was seen, what the
    files say after the kill): equal unless the batch moved on in between.
    """
    floor = (files.newest() or (-1, COMMITTED))[0]
    with log.open("w") as output:
        process = subprocess.Popen(
            command, env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 600
    try:
        while True:
            now = files.newest()
            if now is not None and now[0] > floor and now[0] in batches and now[1] == point:
                os.killpg(process.pid, signal.SIGKILL)  # the driver and its JVM, like a lost container
                process.wait()
                return now, files.newest()
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"no batch of {batches} reached {point!r} (exit {process.poll()}, last {now}):\n{tail}")
            time.sleep(0.03)  # the shortest window (offset logged -> state written) lasts far longer
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def clean_run(spark, stream_lake, trained_churn, redis_url, tmp_path_factory):
    """The reference: the trigger query run once, uninterrupted, to the end.

    In this process (no JVM start): the same ``catch_up`` as ``loom stream --available-now
    --only triggers`` with the same files per micro-batch; the kill test runs that command.
    """
    from common.runtime.redis_server import connect

    url = _redis_db(redis_url, 3)
    connect(url).flushdb()
    work = _copy_lake(stream_lake, tmp_path_factory.mktemp("clean-run"), trained_churn.work.home)
    _catch_up(spark, trained_churn.plan, work, url)
    return work, url


def test_firings_are_scored_with_features_models_and_actions(spark, clean_run, trained_churn):
    work, url = clean_run
    rows = _predictions(spark, work).collect()
    assert len(rows) >= 10
    assert len({r["batch_id"] for r in rows}) >= 5  # firings spread over many micro-batches
    assert {(r["model_name"], r["model_version"]) for r in rows} == {("churn", trained_churn.outcome.version)}
    assert all(r["score"] is not None and 0 <= r["score"] <= 1 for r in rows)
    assert all(r["features"]["support_calls_7d"] >= 1 for r in rows)  # the firing call itself counts
    assert _actions(spark, work).count() == sum(1 for r in rows if r["score"] >= 0.6)
    latest = _latest_in_redis(url)
    assert len(latest) == len({r["customer_id"] for r in rows})


@pytest.mark.slow
def test_kill_dash_nine_at_each_unsafe_point_equals_a_clean_run(
    spark, clean_run, stream_lake, trained_churn, redis_url, tmp_path
):
    """``loom stream`` killed with SIGKILL three times, then restarted to the end, equals the clean run.

    Each kill is aimed at one of the three points where a crash could lose or double
    a prediction, watched in the query's files (QueryFiles): right after batch N's
    offset is logged (the restart must replay N from that write-ahead log); mid-batch,
    after the operator's state store for N is written but before any Delta commit (the
    replay must start from the previous state, not apply N's events twice); and after
    N's predictions Delta commit but before the checkpoint commit (the replay must skip
    the committed append, and still write actions and Redis once). Which batch each
    kill hits is random (a seeded choice among batches with firings), and so is the
    order of the three points. Kills at random times (five of them before) often land
    during the JVM start, and in the short window between the Delta commit and the
    checkpoint commit only by chance; aimed, three kills cover every point, and the
    test checks after each kill that the process died exactly there.
    """
    from common.runtime.redis_server import connect

    clean_work, clean_url = clean_run
    # batch ids are the same in every run: one bronze file per micro-batch, in the order of the bronze log
    firing_batches = sorted(r[0] for r in _predictions(spark, clean_work).select("batch_id").distinct().collect())
    assert len(firing_batches) >= 5, firing_batches  # room for three kills at different batches, and a tail
    url = _redis_db(redis_url, 4)
    connect(url).flushdb()
    work = _copy_lake(stream_lake, tmp_path / "killed", trained_churn.work.home)
    command, env = _stream_command(work, url)
    files = QueryFiles(work)
    rng = random.Random(5)
    points = [PLANNED, STATE_WRITTEN, DELTA_COMMITTED]
    rng.shuffle(points)
    targets = sorted(rng.sample(firing_batches[:-2], len(points)))
    killed_at, progress = [], 0
    for point, target in zip(points, targets, strict=True):
        for _attempt in range(3):  # a retry only if the batch moved on between seeing the point and the kill
            later = [b for b in firing_batches if b >= max(target, progress)]
            seen, after = _kill_at(command, env, files, point, later, tmp_path / f"stream-{len(killed_at)}.log")
            progress = seen[0] + 1
            if seen == after:
                killed_at.append(seen)
                break
        else:
            pytest.fail(f"three kills aimed at {point!r} all landed later: {killed_at}")
    print(f"batches with firings {firing_batches}, killed at {killed_at}")  # (batch, point): each point once

    _run_to_end(work, url)  # the command finishes what the last kill left, and exits 0
    killed = _predictions(spark, work).select(*COLUMNS)
    clean = _predictions(spark, clean_work).select(*COLUMNS)
    assert killed.count() == clean.count()
    assert killed.exceptAll(clean).count() == 0 and clean.exceptAll(killed).count() == 0
    assert killed.groupBy("customer_id", "trigger", "event_id").count().where("count > 1").count() == 0
    killed_actions, clean_actions = _actions(spark, work).select(*COLUMNS), _actions(spark, clean_work).select(*COLUMNS)
    assert killed_actions.exceptAll(clean_actions).count() == 0 and clean_actions.exceptAll(killed_actions).count() == 0
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


@pytest.mark.slow
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
        spark,
        work,
        plan,
        _redis_db(redis_url, 5),
        interval="1 second",
        max_files_per_trigger=TRIGGER_FILES_PER_BATCH,
    )
    files = QueryFiles(work)
    try:
        deadline = time.monotonic() + 300
        # the first predictions commit, seen in the Delta log: no Spark job competes with the stream
        while time.monotonic() < deadline and not files.delta_commits():
            assert query.exception() is None
            time.sleep(0.2)
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
