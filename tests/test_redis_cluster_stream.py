"""A Redis Cluster master killed during a micro-batch of ``loom stream``: the stream stops with one clear error,
and once the master is back the stream run again ends with exactly the clean run's online store and history.

The cluster's nodes keep an append-only file (``RedisClusterServers(persistent=True)``): a killed master comes
back with every write it acknowledged, as a production node with persistence (or a replica) does. The stream
is ``loom stream --available-now --only features`` in this process (``main_for``: no JVM start), on the
session's SparkSession, over two days of generated events of 40 customers ingested once, in two bronze
commits: the events group runs two micro-batches, the profile group one. Time: the three runs' query starts
and batches, about 25 s; the fixtures 12 s (load 2-4).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest

from common.compile import compile_usecase
from common.features.offline import WRITE_ORDER
from common.features.streaming import feature_checkpoint
from common.generate import GenerateOptions, generate_landing
from common.ingest.stream import ingest_source
from common.lake.paths import history_path
from common.online.encoding import read_header
from common.runtime.redis_cluster import CLUSTER_ENV, RedisClusterServers
from common.runtime.redis_server import connect, masters
from common.settings import Paths
from common.spec import load_usecase

INGEST_FILES_PER_BATCH = 24  # hourly landing files an ingestion batch: 2 days of events make 2 bronze commits
FILES_PER_BATCH = 1  # bronze files a feature micro-batch: what one ingestion batch of this small data wrote
KILLED = 1  # the master killed (not node 0, the seed of REDIS_URL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with RedisClusterServers(directory=tmp_path_factory.mktemp("redis-cluster"), persistent=True) as servers:
        yield servers


@pytest.fixture(scope="module")
def bronze(spark, tmp_path_factory) -> Paths:
    """Bronze of the sources the feature groups read (events, customers), ingested once; each run copies it."""
    spec = load_usecase("churn")
    work = Paths(tmp_path_factory.mktemp("bronze"))
    options = GenerateOptions(customers=40, days=2, seed=5, start=date(2026, 1, 10), malformed_rate=0.0)
    generate_landing(spec, work, options)
    ingest_source(spark, spec, "customers", work)
    ingest_source(spark, spec, "events", work, max_files_per_trigger=INGEST_FILES_PER_BATCH)
    return work


def _home(bronze: Paths, home: Path) -> Paths:
    shutil.copytree(bronze.lake / "churn" / "bronze", home / "lake" / "churn" / "bronze")
    return Paths(home)


def _stream(home: Paths, monkeypatch, capfd) -> tuple[int, str]:
    """``loom stream --available-now --only features`` on ``home``; returns its exit code and stderr."""
    import jobs.stream as job
    from common.runtime.python_daemon import PRELOAD_ENV
    from jobs.runner import main_for

    monkeypatch.setenv("LOOM_HOME", str(home.home))
    monkeypatch.delenv(PRELOAD_ENV, raising=False)  # the job sets it; it must not outlive the test
    capfd.readouterr()
    argv = ["--usecase", "churn", "--available-now", "--only", "features"]
    code = main_for("stream", job, [*argv, "--max-files-per-trigger", str(FILES_PER_BATCH)])
    return code, capfd.readouterr().err


def _contents(url: str) -> dict[bytes, bytes]:
    """Every key of the cluster (each master's) with its value."""
    client = connect(url)
    try:
        return {key: node.get(key) for node in masters(client) for key in node.scan_iter(count=1000)}
    finally:
        client.close()


def _flush(url: str) -> None:
    client = connect(url)
    try:
        for node in masters(client):
            node.flushall()
    finally:
        client.close()


def _history(spark, home: Paths, plan) -> dict[str, Counter]:
    """Each group's history rows as a multiset (without the write time, which differs between any two runs)."""
    rows = {}
    for group in plan.groups.values():
        frame = spark.read.format("delta").load(history_path(home, group)).drop(WRITE_ORDER)
        rows[group.name] = Counter(tuple(row) for row in frame.select(*sorted(frame.columns)).collect())
    return rows


def _batches(checkpoint: Path, log: str) -> set[int]:
    folder = checkpoint / log
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()


@dataclass
class Kill:
    """What the watcher saw: the batch under way, the keys the killed master held (its writes paused from then
    on), and master 0's keys and values when the pause began."""

    batch: int = -1
    held: int = -1
    first_master: dict[bytes, bytes] = field(default_factory=dict)
    problem: str = ""


def _evalsha_calls(node) -> int:
    return node.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def _kill_mid_write(cluster, checkpoint: Path, batch: int, done: threading.Event, kill: Kill) -> None:
    """Kill master :data:`KILLED` (SIGKILL) in the middle of the Redis write of micro-batch ``batch`` (or a later
    one) of the events group, with the batch written on master 0 and not on it.

    Once the batch has written its state (the RocksDB changelog of version ``batch + 1``; not committed), its
    online write comes next: master :data:`KILLED`'s writes are paused (``CLIENT PAUSE WRITE``: scripts and
    writes wait, reads and ``SCRIPT LOAD`` go on). The writer sends its guarded calls in slot order through
    cluster pipelines, master 0 (the lowest slots) first, so as soon as master 0 ran one the master is killed
    with the batch's calls to it waiting."""
    first, paused = connect(cluster.nodes[0].url, cluster=False), connect(cluster.nodes[KILLED].url, cluster=False)
    deadline = time.monotonic() + 300
    try:
        while kill.batch < 0 and not done.is_set() and time.monotonic() < deadline:
            newest = max(_batches(checkpoint, "offsets"), default=-1)
            under_way = newest >= batch and newest not in _batches(checkpoint, "commits")
            if under_way and next((checkpoint / "state" / "0").glob(f"*/{newest + 1}.changelog"), None) is not None:
                calls = _evalsha_calls(first)  # before the snapshot: a write in between is seen, not missed
                kill.first_master = {key: first.get(key) for key in first.scan_iter(count=1000)}
                paused.client_pause(60_000, all=False)
                kill.batch, kill.held = newest, paused.dbsize()
            else:
                time.sleep(0.01)
        while kill.batch >= 0 and not done.is_set() and time.monotonic() < deadline:
            if _evalsha_calls(first) > calls:
                cluster.nodes[KILLED].process.kill()
                return
            time.sleep(0.002)
        kill.problem = f"no kill: batch {kill.batch}, the stream {'ended' if done.is_set() else 'took over 300 s'}"
        if kill.batch >= 0:
            paused.client_unpause()
    finally:
        first.close()
        paused.close()


@pytest.mark.slow
def test_a_master_killed_during_a_stream_micro_batch_stops_it_clearly_and_the_rerun_equals_a_clean_run(
    spark, bronze, cluster, tmp_path, monkeypatch, capfd
):
    """Clean run, then the same run with master 1 killed (SIGKILL) in the middle of a micro-batch's Redis write
    (:func:`_kill_mid_write`: the batch's part on master 0 written, its part on master 1 waiting). The job exits
    2 with one line naming the silent master; the failed batch is not committed and half written. The master is
    restarted (its append-only file replayed: exactly the keys it held) and the same command is run again: the
    online store holds exactly the clean run's keys and values (0 stale, 0 extra, 0 lost) and the feature
    history the clean run's rows."""
    plan = compile_usecase(load_usecase("churn"))
    monkeypatch.setenv(CLUSTER_ENV, "1")
    monkeypatch.setenv("REDIS_URL", cluster.url)
    clean = _home(bronze, tmp_path / "clean")
    assert _stream(clean, monkeypatch, capfd)[0] == 0
    clean_redis, clean_history = _contents(cluster.url), _history(spark, clean, plan)
    checkpoint = Path(feature_checkpoint(clean, plan.group("activity")))
    assert len(_batches(checkpoint, "commits")) == 2, "the events group runs two micro-batches"
    assert len(clean_redis) >= 60

    _flush(cluster.url)
    killed = _home(bronze, tmp_path / "killed")
    checkpoint = Path(feature_checkpoint(killed, plan.group("activity")))
    done, kill = threading.Event(), Kill()
    watcher = threading.Thread(target=_kill_mid_write, args=(cluster, checkpoint, 1, done, kill))
    watcher.start()
    try:
        code, err = _stream(killed, monkeypatch, capfd)
    finally:
        done.set()
        watcher.join()
    assert not kill.problem, f"{kill.problem} (exit {code}): {err[-2000:]}"
    assert code == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("loom stream: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert errors[0].startswith("loom stream: error: the online store's Redis Cluster master ")
    for part in (cluster.addresses[KILLED], "'loom_churn_features_activity'", "Nothing of the stream is lost", "Fix:"):
        assert part in errors[0], errors[0]
    assert max(_batches(checkpoint, "offsets")) == kill.batch and kill.batch not in _batches(checkpoint, "commits")
    first = connect(cluster.nodes[0].url, cluster=False)
    try:  # the failed batch is half written: master 0 took its part (values newer than before the batch)
        changed = [key for key, value in kill.first_master.items() if first.get(key) != value]
        assert changed, f"batch {kill.batch} wrote nothing on master 0 before the kill"
    finally:
        first.close()

    cluster.restart(KILLED)
    back = connect(cluster.nodes[KILLED].url, cluster=False)
    try:  # its append-only file replayed: every key it held when its writes were paused, and only those
        assert back.dbsize() == kill.held > 0, f"batch {kill.batch}: {kill.held} keys before the kill"
    finally:
        back.close()

    code, err = _stream(killed, monkeypatch, capfd)
    assert code == 0, err[-3000:]
    assert kill.batch in _batches(checkpoint, "commits")
    after = _contents(cluster.url)
    lost = clean_redis.keys() - after.keys()
    extra = after.keys() - clean_redis.keys()
    differing = {key for key in clean_redis.keys() & after.keys() if clean_redis[key] != after[key]}
    stale = {
        key for key in differing if read_header(after[key]).event_time_us < read_header(clean_redis[key]).event_time_us
    }
    assert not (lost or extra or differing), (
        f"{len(lost)} lost, {len(extra)} extra, {len(differing)} differing ({len(stale)} stale) of "
        f"{len(clean_redis)} keys; e.g. {sorted(lost | extra | differing)[:3]}"
    )
    assert _history(spark, killed, plan) == clean_history
