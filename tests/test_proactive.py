"""Proactive scoring end to end: the whole ``loom stream`` (ingestion, features, triggers scored with the
registered churn model, written exactly once), under kill -9 and through a hot redeploy.

One generated day of landing files (300 customers, 24 hourly event files), a few files a micro-batch, so
ingestion, features and triggers each run several batches. The clean run (``clean_stream``: ``catch_up`` in this
process, like ``loom stream --available-now``) is the reference for every test here: its firings are checked,
scored again in batch, compared with a run killed again and again, and replayed by a trigger query whose
champion moves mid-run. The model registry is the one of ``trained_churn`` (linked into each work folder).

Time: each micro-batch costs seconds of fixed overhead (state store, Delta commits, features as of the firing,
model UDF) and each ``loom stream`` process a JVM start and a model load. So this file's duration is set by the
number of micro-batches and of processes, not by the number of rows: the kill test's processes (one per kill,
and the one that finishes) dominate it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import mlflow
import pytest
from pyspark.sql import functions as F

from common.features.streaming import feature_checkpoint
from common.ingest.validation import SOURCE_FILE
from common.ingest.writer import INGESTED_AT
from common.lake.paths import IngestLocations, bronze_path, history_path, predictions_path
from common.models import registry
from common.models.scoring import score_batch
from common.settings import Paths
from common.triggers.operator import STATE_LAYOUT
from tests.conftest import quick_jvm_env

REPO = Path(__file__).resolve().parent.parent

# One generated day of landing files (26 event files), a few files a micro-batch, so ingestion, features and
# triggers each run several batches (see the kill test): 3 files make 9 events batches. An ingestion batch
# appends one bronze file per date (common.lake.append), and the downstream queries take 3 of those a batch:
# 3 feature and 4 trigger batches (2 with firings). Each batch costs seconds of fixed overhead in every run of
# this file, so no more batches than the kill test's aims need.
FULL_DAYS = 1
FULL_FILES_PER_BATCH = 3

# Where a micro-batch can be when the process dies, read from its query's files (see QueryFiles).
PLANNED = "offset logged"
STATE_WRITTEN = "state store written, checkpoint commit missing"
DELTA_COMMITTED = "Delta committed, checkpoint commit missing"
COMMITTED = "committed"


def _link_registry(home: Path, registry_home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "mlflow.db").symlink_to(registry_home / "mlflow.db")


def _copy_lake(source: Paths, home: Path, registry_home: Path) -> Paths:
    _link_registry(home, registry_home)
    shutil.copytree(source.lake / "churn" / "bronze", home / "lake" / "churn" / "bronze")
    return Paths(home)


def _redis_db(url: str, db: int) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path=f"/{db}"))


def _stream_command(work: Paths, redis: str) -> tuple[list[str], dict[str, str]]:
    """``loom stream --available-now`` on ``work``, a few files a micro-batch, as the kill test runs it."""
    # the quick JVM of short jobs: each of these processes runs a few micro-batches, and the kill test starts 11
    env = dict(os.environ, LOOM_HOME=str(work.home), REDIS_URL=redis, PYSPARK_PYTHON=sys.executable, **quick_jvm_env())
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "jobs.stream", "--usecase", "churn", "--available-now"]
    return command + ["--max-files-per-trigger", str(FULL_FILES_PER_BATCH)], env


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


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # a Delta log file replaced by a checkpoint's clean-up, or a race with a rename
        return -1


@dataclass(frozen=True)
class Landed:
    """Where one query's newest micro-batch stood: ``point`` is one of :data:`PLANNED`, :data:`STATE_WRITTEN`,
    :data:`DELTA_COMMITTED` (``tables``: those committed) and :data:`COMMITTED`; ``fresh``: the process under
    test wrote some of its files (else they are an earlier process's, and its replay had written nothing yet)."""

    query: str
    batch: int
    point: str
    tables: tuple[str, ...] = ()
    fresh: bool = True

    def __str__(self) -> str:
        where = f"{self.point} ({', '.join(self.tables)})" if self.tables else self.point
        return f"{self.query} batch {self.batch}: {where}"


class QueryFiles:
    """Where one streaming query of a work folder stands, from its files alone (another process runs it).

    Per micro-batch N, Spark and the query's ``foreachBatch`` write, in this order: ``offsets/N`` (the batch is
    planned); for a stateful query (feature tiles, trigger matches) ``state/0/<partition>/<N+1>.changelog``, the
    RocksDB changelog checkpoint of the state for N (a snapshot ``<N+1>.zip`` may follow later, in the
    background); the batch's Delta commits (``tables``, in write order); and last ``commits/N``. Files appear
    whole (written, then renamed). Only files written since ``since_ns`` (the start of the process under test)
    count: a batch an earlier process left uncommitted is replayed, and that process's files say nothing of the
    replay. A Delta commit newer than ``offsets/N`` is batch N's: batch N-1 committed before N was planned, and
    each table has one writing query. None of this relies on the Delta transaction ids whose effect the kill
    test checks.
    """

    def __init__(self, name: str, checkpoint: str, tables: dict[str, str]) -> None:
        self.name = name
        self.checkpoint = Path(checkpoint)
        self.delta_logs = {table: Path(path) / "_delta_log" for table, path in tables.items()}

    def delta_commits(self, table: str | None = None) -> list[Path]:
        """The commit files of ``table`` (default: the first one), none before its first write."""
        log = self.delta_logs[table or next(iter(self.delta_logs))]
        return sorted(log.glob("*.json")) if log.is_dir() else []

    def newest(self, since_ns: int = 0) -> Landed | None:
        """Where the newest planned batch stands, or None before the query's first batch is planned."""
        offsets = _numbered(self.checkpoint / "offsets")
        if not offsets:
            return None
        batch = max(offsets)
        logged = _mtime_ns(self.checkpoint / "offsets" / str(batch))
        if batch in _numbered(self.checkpoint / "commits"):
            return Landed(
                self.name, batch, COMMITTED, fresh=_mtime_ns(self.checkpoint / "commits" / str(batch)) >= since_ns
            )
        after = max(logged, since_ns)
        tables = tuple(
            table
            for table in self.delta_logs
            if any(_mtime_ns(commit) >= after for commit in self.delta_commits(table))
        )
        if tables:
            return Landed(self.name, batch, DELTA_COMMITTED, tables)
        changelogs = (p / f"{batch + 1}.changelog" for p in (self.checkpoint / "state" / "0").glob("[0-9]*"))
        if any(_mtime_ns(changelog) >= after for changelog in changelogs):
            return Landed(self.name, batch, STATE_WRITTEN)
        return Landed(self.name, batch, PLANNED, fresh=logged >= since_ns)


def _trigger_files(work: Paths, plan) -> QueryFiles:
    """The trigger query of the churn events: the history of each group it carries (``loom stream`` has it
    write their features), then predictions and actions."""
    from common.triggers.stream import features_in_trigger_queries

    tables = {f"history {name}": history_path(work, plan.group(name)) for name in features_in_trigger_queries(plan)}
    tables["predictions"] = predictions_path(work, "churn", "stream")
    tables["actions"] = predictions_path(work, "churn", "actions")
    return QueryFiles("triggers events", work.checkpoint("churn", f"triggers_events_{STATE_LAYOUT}"), tables)


def _stream_files(work: Paths, plan) -> list[QueryFiles]:
    """Every query ``loom stream`` runs, in the order it starts them: one ingestion per source (quarantine,
    then bronze), one feature query per group the trigger query does not write (history), the trigger query."""
    from common.triggers.stream import features_in_trigger_queries

    queries = []
    for name, source in plan.spec.sources.items():
        locations = IngestLocations.of(work, plan.usecase, name, source)
        tables = {"quarantine": locations.quarantine, "bronze": locations.bronze}
        queries.append(QueryFiles(f"ingest {name}", locations.checkpoint, tables))
    carried = features_in_trigger_queries(plan)
    for group in plan.groups.values():
        if group.name not in carried:
            tables = {"history": history_path(work, group)}
            queries.append(QueryFiles(f"features {group.name}", feature_checkpoint(work, group), tables))
    return [*queries, _trigger_files(work, plan)]


@dataclass(frozen=True)
class Aim:
    """A kill aimed at ``point`` of a micro-batch of ``query`` (for DELTA_COMMITTED: once ``table`` committed)."""

    query: str
    point: str
    table: str | None = None
    required: bool = True  # else a miss is a kill at another point, not a reason to try again
    batch: int | None = None  # only this batch (else any)

    def __str__(self) -> str:
        batch = "" if self.batch is None else f" batch {self.batch}"
        return f"{self.query}{batch}: {self.point}" + (f" ({self.table})" if self.table else "")

    def hit(self, landed: Landed | None) -> bool:
        """A batch of this process at the point: "offset logged" only for a batch it planned, not a replay."""
        return (
            landed is not None
            and landed.point == self.point
            and landed.fresh
            and (self.table is None or self.table in landed.tables)
            and (self.batch is None or self.batch == landed.batch)
        )


# The kills of the whole-stream test, in order: None is a kill at a random point, an Aim one at that point.
# Ingestion runs first (customers, events, outcomes), then the feature and trigger queries side by side.
RANDOM_KILL_WINDOW_S = 6.0


def _kill_plan(quiet_batch: int) -> list[Aim | None]:
    """The kills; ``quiet_batch``: an events ingestion batch that quarantines nothing (:func:`_quiet_batches`).

    A retry of such a batch after its bronze commit finds its own records in bronze and calls them
    duplicates: its quarantine append must be skipped too (see BatchWriter). The gap is short and the batch
    is one, so that aim is not retried (the unit test in test_ingest.py covers it whatever happens here).
    """
    return [  # ten: the floor; each kill costs a process (JVM start, model load, replay)
        None,
        Aim("ingest events", PLANNED),
        Aim("ingest events", DELTA_COMMITTED, "bronze"),
        Aim("ingest events", DELTA_COMMITTED, "bronze", required=False, batch=quiet_batch),
        Aim("features profile", DELTA_COMMITTED, "history"),
        None,
        Aim("triggers events", DELTA_COMMITTED, "history activity"),
        Aim("triggers events", DELTA_COMMITTED, "predictions"),
        None,
        Aim("triggers events", STATE_WRITTEN),
    ]


def _quiet_batches(work: Paths, source: str) -> list[int]:
    """The batches of a source's ingestion that quarantined nothing: their quarantine commit (whose
    transaction version is the batch id) wrote no row."""
    quiet = []
    for commit in sorted((Path(work.table("churn", "quarantine", source)) / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in commit.read_text().splitlines() if line.strip()]
        txn = next((action["txn"] for action in actions if "txn" in action), None)
        info = next((action["commitInfo"] for action in actions if "commitInfo" in action), {})
        metrics = info.get("operationMetrics", {})  # Spark's writer, or delta-rs' (common.lake.append)
        if txn is not None and str(metrics.get("numOutputRows", metrics.get("num_added_rows"))) == "0":
            quiet.append(txn["version"])
    return quiet


def _missed(aim: Aim, seen: Landed | None, queries: list[QueryFiles], since_ns: int) -> bool:
    """Past the aimed batch, or an aimed ingestion query done in this process (a query started after it wrote
    a file: ingestion runs one source after the other, the feature and trigger queries side by side)."""
    past = seen is not None and seen.fresh and aim.batch is not None
    if past and (seen.batch > aim.batch or (seen.batch == aim.batch and seen.point == COMMITTED)):
        return True
    if not aim.query.startswith("ingest ") or seen is None or seen.point != COMMITTED:
        return False
    later = queries[[query.name for query in queries].index(aim.query) + 1 :]
    return any((landed := query.newest(since_ns)) is not None and landed.fresh for query in later)


def _kill_once(
    command: list[str],
    env: dict[str, str],
    queries: list[QueryFiles],
    log: Path,
    *,
    aim: Aim | None = None,
    delay_s: float = 0.0,
) -> tuple[Landed | None, Landed | None, list[Landed]]:
    """Start ``loom stream`` and SIGKILL its process group (driver and JVM) once, like a lost container.

    Aimed: as soon as ``aim`` is hit. At random: ``delay_s`` after the process first wrote a file of any query
    (a planned batch, a state file, a commit), so the kill lands in the pipeline's work, not in the JVM's start.
    Returns (the aimed point as seen, the aimed query's files after the kill, every query the kill left
    with files of an unfinished batch).
    """
    by_name = {query.name: query for query in queries}
    since = time.time_ns()
    with log.open("w") as output:
        process = subprocess.Popen(
            command, env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline, started_work = time.monotonic() + 600, None
    seen = None
    try:
        while True:
            if aim is not None:
                seen = by_name[aim.query].newest(since)
                if aim.hit(seen):
                    break
                if _missed(aim, seen, queries, since):
                    seen = None
                    break
            elif started_work is None:
                if any((landed := query.newest(since)) is not None and landed.fresh for query in queries):
                    started_work = time.monotonic()
            elif time.monotonic() - started_work >= delay_s:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"the kill aimed at {aim or 'random'} did not happen (exit {process.poll()}):\n{tail}")
            # Only the gap between a Delta commit and the checkpoint commit is short: the other points last a
            # batch's work, and each poll (about 0.3-0.8 ms of CPU) takes the cores the process under test needs.
            # So quick polls only while the aimed query is in a batch (planned, not committed): it reaches its
            # Delta commit a batch's work later, never within one slow poll of planning it.
            in_batch = seen is not None and seen.point != COMMITTED
            time.sleep(0.002 if aim is not None and aim.point == DELTA_COMMITTED and in_batch else 0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    landed = [x for query in queries if (x := query.newest(since)) is not None and x.fresh and x.point != COMMITTED]
    after = by_name[aim.query].newest(since) if aim is not None else None
    return (seen if aim is not None else None), after, landed


@pytest.fixture(scope="module")
def full_landing(tmp_path_factory) -> Paths:
    """Landing files of one generated day (all sources), not yet ingested: what ``loom stream`` starts from.

    The files' modification times are set one second apart in name order: the file source takes the next
    files by modification time, so every copy of this folder is cut into the same micro-batches.
    """
    from common.generate import generate_landing
    from common.generate.options import demo_options
    from common.spec import load_usecase

    work = Paths(tmp_path_factory.mktemp("full-landing"))
    generate_landing(load_usecase("churn"), work, demo_options(date(2026, 1, 15), customers=300, days=FULL_DAYS))
    base = time.time_ns() - 10**12
    for index, file in enumerate(sorted(p for p in work.landing.rglob("*") if p.is_file())):
        os.utime(file, ns=(base + index * 10**9, base + index * 10**9))
    return work


def _copy_landing(source: Paths, home: Path, registry_home: Path) -> Paths:
    _link_registry(home, registry_home)
    shutil.copytree(source.landing, home / "landing")  # copy2: the modification times too
    return Paths(home)


def _cut_like_loom_stream(spark):
    """While the block runs, the session cuts work as ``loom stream`` does (spark-conf/local.conf).

    The session of the tests has 2 shuffle partitions and a parallelism of 2, ``loom stream`` 4 and 4: file
    scans (landing files, bronze) are split into that many partitions, so an ingestion batch writes that many
    bronze files, and the feature and trigger queries (``maxFilesPerTrigger`` bronze files a batch) are cut
    at other places; the stateful operators keep their number of partitions from their first batch.
    """
    from common.runtime.spark import read_profile, session_conf

    profile = read_profile("local")
    return session_conf(
        spark,
        {
            "spark.sql.shuffle.partitions": profile["spark.sql.shuffle.partitions"],
            "spark.sql.leafNodeDefaultParallelism": profile["spark.default.parallelism"],
        },
    )


def _file_name(column: str):
    """A source file's name without its folder: the two runs read copies of the same files in other folders."""
    return F.element_at(F.split(F.col(column), "/"), -1)


def _outputs(spark, work: Paths, plan) -> dict[str, object]:
    """Every table ``loom stream`` writes, as DataFrames comparable between two runs.

    Left out, as they differ between any two runs: the wall-clock write times (``_ingested_at`` of bronze,
    ``ingested_at`` of quarantine); absolute source file paths keep only the file name. History tables lose
    their write order (``_write_order``: the driver's clock when the append started), and are read both raw
    and through ``read_history``.
    """
    from common.features.offline import WRITE_ORDER, read_history

    tables = {}
    for name in plan.spec.sources:
        bronze = spark.read.format("delta").load(bronze_path(work, plan.usecase, name))
        tables[f"bronze {name}"] = bronze.drop(INGESTED_AT).withColumn(SOURCE_FILE, _file_name(SOURCE_FILE))
        quarantine = spark.read.format("delta").load(work.table(plan.usecase, "quarantine", name))
        tables[f"quarantine {name}"] = quarantine.drop("ingested_at").withColumn(
            "source_file", _file_name("source_file")
        )
    for group in plan.groups.values():
        raw = spark.read.format("delta").load(history_path(work, group))
        for how, history in (("raw", raw), ("read_history", read_history(spark, work, group))):
            tables[f"history {group.name} ({how})"] = history.drop(WRITE_ORDER)
    tables["predictions stream"] = _predictions(spark, work)
    tables["predictions actions"] = _actions(spark, work)
    return tables


def _hashable(value):
    """A collected value as something a Counter can count: rows and lists as tuples, maps as sorted items."""
    if isinstance(value, list | tuple):  # a Row is a tuple
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, float) and value != value:
        return "NaN"  # equal to itself, as in Spark's set operations
    return value


def _differences(killed, clean) -> list[str]:
    """What differs between two runs' tables, as multisets (a duplicated row counts).

    The tables are small (one generated day), so each side is collected once and counted here: a Spark
    ``exceptAll`` both ways and four counts per table cost a minute of jobs for the same answer.
    """
    problems = []
    for name, clean_frame in clean.items():
        columns = sorted(clean_frame.columns)
        killed_rows = Counter(_hashable(row) for row in killed[name].select(*columns).collect())
        clean_rows = Counter(_hashable(row) for row in clean_frame.select(*columns).collect())
        extra, lost = killed_rows - clean_rows, clean_rows - killed_rows
        if extra or lost:
            problems.append(
                f"{name}: {killed_rows.total()} rows vs {clean_rows.total()} in the clean run; "
                f"{extra.total()} extra or duplicated, e.g. {list(extra)[:3]}; {lost.total()} lost, e.g. {list(lost)[:3]}"
            )
    return problems


def _redis_contents(url: str) -> dict[bytes, object]:
    """Every key of a Redis database with its value: feature vectors (strings) and latest predictions (hashes)."""
    from common.runtime.redis_server import connect

    client = connect(url)
    try:
        return {
            key: client.hgetall(key) if client.type(key) == b"hash" else client.get(key) for key in client.scan_iter()
        }
    finally:
        client.close()


@pytest.fixture(scope="module")
def clean_stream(spark, full_landing, trained_churn, redis_url, tmp_path_factory):
    """The reference: the whole ``loom stream --available-now`` run once, uninterrupted, from the landing files.

    In this process (no JVM start): ``catch_up``, the code of that command, with the same files per micro-batch
    and the partitioning of ``loom stream`` (:func:`_cut_like_loom_stream`). Returns the work folder and the
    Redis database it wrote.
    """
    from common.pipeline import catch_up
    from common.runtime.redis_server import connect

    url = _redis_db(redis_url, 6)
    connect(url).flushdb()
    work = _copy_landing(full_landing, tmp_path_factory.mktemp("clean-stream"), trained_churn.work.home)
    with _cut_like_loom_stream(spark):
        catch_up(spark, trained_churn.plan, work, url, max_files_per_trigger=FULL_FILES_PER_BATCH)
    return work, url


def test_firings_are_scored_with_features_models_and_actions(spark, clean_stream, trained_churn):
    work, url = clean_stream
    rows = _predictions(spark, work).collect()
    assert len(rows) >= 10
    assert len({r["batch_id"] for r in rows}) >= 2  # firings spread over several micro-batches
    assert {(r["model_name"], r["model_version"]) for r in rows} == {("churn", trained_churn.outcome.version)}
    assert all(r["score"] is not None and 0 <= r["score"] <= 1 for r in rows)
    assert all(r["features"]["support_calls_7d"] >= 1 for r in rows)  # the firing call itself counts
    assert _actions(spark, work).count() == sum(1 for r in rows if r["score"] >= 0.6)
    latest = _latest_in_redis(url)
    assert len(latest) == len({r["customer_id"] for r in rows})


def test_the_trigger_query_writes_the_features_it_folds(spark, clean_stream, trained_churn):
    """``loom stream`` with its triggers: the trigger query writes the features of ``activity`` (its operator
    folds that group's events), no feature query of its own runs for it, and every group's online vectors
    equal the batch computation at their time (``profile`` still comes from its feature query)."""
    from common.features import offline
    from tests.test_pipeline import assert_every_group_agrees_with_batch

    work, url = clean_stream
    plan = trained_churn.plan
    assert not Path(feature_checkpoint(work, plan.group("activity"))).exists()
    assert Path(feature_checkpoint(work, plan.group("profile"))).exists()
    assert offline.read_history(spark, work, plan.group("activity")).count() > 0
    assert_every_group_agrees_with_batch(spark, work, plan, url)


@pytest.mark.slow
def test_loom_stream_killed_with_sigkill_again_and_again_equals_a_clean_run(
    spark, full_landing, clean_stream, trained_churn, redis_url, tmp_path
):
    """The whole ``loom stream --available-now`` (ingestion, features, triggers) from landing files, killed
    with SIGKILL (driver and JVM) at least ten times, then restarted to the end: bronze, quarantine, the
    feature history, predictions, actions and Redis equal those of a clean run, as multisets.

    With a few landing files per micro-batch every query runs several batches, and where they are cut is
    the same in every run (the file and Delta sources take the next files in order), so a killed and
    restarted run must end equal to a clean run: 0 lost, 0 duplicated.

    The kills alternate between random points (a seeded random delay after the process first wrote a file)
    and points aimed at in the queries' files (QueryFiles), where a crash could lose or double a row: right
    after an offset is logged, after the trigger operator's state store (RocksDB changelog: the triggers'
    matches and the activity tiles, whose features the trigger query writes) for a batch was written but
    before its checkpoint commit, and after a Delta commit (bronze, feature history, predictions) but before
    the checkpoint commit. Kills at random times alone land in the
    short gaps between a Delta commit and the checkpoint commit only by chance. One aim is the bronze commit
    of an events batch that quarantined nothing (see :func:`_kill_plan`). Each aimed kill is checked
    afterwards to have landed there; every kill prints where the queries stood.

    The clean run is ``clean_stream``: the same code in this process, the same files per batch.
    """
    from common.runtime.redis_server import connect

    plan = trained_churn.plan
    clean_work, clean_url = clean_stream
    killed_url = _redis_db(redis_url, 7)
    clean_batches = {q.name: q.newest().batch + 1 for q in _stream_files(clean_work, plan)}
    assert clean_batches["ingest events"] >= 4 and "features activity" not in clean_batches, clean_batches
    assert clean_batches["triggers events"] >= 3 and _predictions(spark, clean_work).count() > 0, clean_batches

    work = _copy_landing(full_landing, tmp_path / "killed", trained_churn.work.home)
    connect(killed_url).flushdb()
    command, env = _stream_command(work, killed_url)
    queries = _stream_files(work, plan)
    rng = random.Random(13)
    kills: list[str] = []
    quiet = _quiet_batches(clean_work, "events")
    assert quiet, "no events batch without quarantined records: the aim at such a batch needs one"
    for number, aim in enumerate(_kill_plan(max(quiet))):
        for attempt in range(3):  # aimed: again only if the batch moved on between seeing the point and the kill
            log = tmp_path / f"stream-{number}-{attempt}.log"
            delay = 0.0 if aim is not None else rng.uniform(0.0, RANDOM_KILL_WINDOW_S)
            started = time.monotonic()
            seen, after, landed = _kill_once(command, env, queries, log, aim=aim, delay_s=delay)
            hit = aim is not None and seen is not None and seen == after
            label = f"random, {delay:.1f} s in" if aim is None else f"aimed at {aim}{'' if hit else ', missed'}"
            took = f"killed after {time.monotonic() - started:.0f} s"
            kills.append(f"{label}, {took}: {'; '.join(map(str, landed)) or 'between batches'}")
            if aim is None or hit or not aim.required:
                break
        else:
            pytest.fail(f"three kills aimed at {aim} all landed later:\n" + "\n".join(kills))
    print(f"{len(kills)} kills, batches of the clean run {clean_batches}:\n" + "\n".join(kills))
    assert len(kills) >= 10

    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]  # the command finishes what the last kill left
    killed_tables = _outputs(spark, work, plan)
    problems = _differences(killed_tables, _outputs(spark, clean_work, plan))
    for table, keys in (
        ("bronze events", ["event_id"]),
        ("predictions stream", ["customer_id", "trigger", "event_id"]),
    ):
        doubled = killed_tables[table].groupBy(*keys).count().where("count > 1").count()
        if doubled:
            problems.append(f"{table}: {doubled} keys {keys} more than once")
    killed_redis, clean_redis = _redis_contents(killed_url), _redis_contents(clean_url)
    if killed_redis != clean_redis:
        differing = sorted(
            k for k in killed_redis.keys() | clean_redis.keys() if killed_redis.get(k) != clean_redis.get(k)
        )
        problems.append(f"redis: {len(differing)} of {len(clean_redis)} keys differ, e.g. {differing[:5]}")
    assert not problems, "\n".join(problems)


def test_stream_scores_equal_batch_scoring_at_the_same_time(spark, clean_stream, trained_churn, tmp_path):
    """A firing's score equals batch scoring of its customer at its time, over the history ``loom backfill``
    writes from the clean run's bronze.

    Not over the history the stream itself appended: per micro-batch, that holds each touched customer's value
    at its newest event time in the batch only (docs/time-semantics.md), so a firing between two of them reads
    an older row there. The backfill writes the value at every event time, which the firing's features are.
    """
    from common.features.backfill import backfill

    clean_work, _ = clean_stream
    work = _copy_lake(clean_work, tmp_path / "batch", trained_churn.work.home)
    backfill(spark, work, trained_churn.plan)
    # every firing's features (carried from the trigger operator's state) are the point-in-time read of that history
    from common.features.offline import read_history
    from common.features.point_in_time import HistoryInput, as_of_join

    fired = _predictions(spark, clean_work).where(F.col("features").isNotNull())
    names = list(trained_churn.plan.group("activity").feature_names)
    at_firing = as_of_join(
        fired.select("customer_id", "event_id", "firing_ts", "features"),
        [
            HistoryInput(
                trained_churn.plan.group("activity"),
                read_history(spark, work, trained_churn.plan.group("activity")),
                tuple(names),
            )
        ],
        "firing_ts",
    ).collect()
    assert at_firing
    for row in at_firing:
        for name in names:
            carried, expected = row["features"][name], row[name]
            assert (carried is None and expected is None) or carried == pytest.approx(expected, rel=1e-9, abs=1e-9), (
                f"{row['event_id']} {name}: carried {carried}, history {expected}"
            )
    sample = _predictions(spark, clean_work).orderBy("firing_ts", "customer_id").limit(3).collect()
    for row in sample:
        entity = spark.createDataFrame([(row["customer_id"],)], "customer_id string")
        at = row["firing_ts"].replace(tzinfo=UTC)
        model = f"churn/{row['model_version']}"
        _, written, _ = score_batch(spark, trained_churn.plan, model, at, work, entity)
        assert written.first()["score"] == pytest.approx(row["score"], abs=1e-9)


@pytest.mark.slow
def test_champion_moves_during_a_run_without_restart(spark, clean_stream, trained_churn, redis_url, tmp_path):
    """The trigger query over the clean run's bronze, the champion moved after its first predictions: later
    micro-batches score with the new version, without a restart, and the firings are the clean run's."""
    from common.compile import compile_usecase
    from common.spec import load_usecase
    from common.triggers.stream import start_trigger_streams

    clean_work, _ = clean_stream
    work = _copy_lake(clean_work, tmp_path / "redeploy", trained_churn.work.home)
    client = registry.client(trained_churn.work)
    before = registry.version_by_alias("churn", "champion", client)
    new = mlflow.register_model(f"runs:/{trained_churn.outcome.run_id}/model", "churn")
    plan = compile_usecase(load_usecase("churn"))
    with _cut_like_loom_stream(spark):  # the clean run's micro-batches: the same bronze files each
        (query,) = start_trigger_streams(
            spark, work, plan, _redis_db(redis_url, 5), interval="1 second", max_files_per_trigger=FULL_FILES_PER_BATCH
        )
    files = _trigger_files(work, plan)
    try:
        deadline = time.monotonic() + 300
        # the first predictions commit, seen in the Delta log: no Spark job competes with the stream
        while time.monotonic() < deadline and not files.delta_commits("predictions"):
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
