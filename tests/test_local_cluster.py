"""The local distributed topology (issue 15's engines): a Spark standalone cluster, a Redis Cluster and an
MLflow tracking server, each the real server, on 127.0.0.1. ``loom cluster up|down|status`` is tested with the
whole pipeline on them, in tests/test_cluster_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.crc import key_slot

from common.online import OnlineGroup
from common.online.redis_store import RedisOnlineStore
from common.runtime.processes import alive
from common.runtime.redis_cluster import RedisClusterServers

REPO = Path(__file__).resolve().parents[1]
GROUP = OnlineGroup("activity", ("calls_7d", "avg_payment_30d"), ttl_seconds=None)
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


def test_online_store_on_a_redis_cluster_spreads_entities_and_keeps_each_on_one_slot(tmp_path):
    entities = [f"C{i:07d}" for i in range(300)]
    values = np.column_stack([np.arange(300.0), np.arange(300.0) / 7])
    with RedisClusterServers(directory=tmp_path / "redis") as cluster:
        with RedisOnlineStore(cluster.url, usecase="churn", version=1, groups=[GROUP], cluster=True) as store:
            written = store.write(GROUP, entities, values, np.full(300, T0))
            assert written.written == 300
            older = store.write(GROUP, entities[:10], values[:10] + 1, np.full(10, T0 - 1))
            assert older.written == 0, "the event-time guard runs on every master"
            read = store.read_blocks(entities, [GROUP])["activity"]
            np.testing.assert_array_equal(read.values, values)
            assert store.delete_entity(entities[0]) == 1
        sizes = [redis.Redis(host="127.0.0.1", port=int(a.rsplit(":", 1)[1])).dbsize() for a in cluster.addresses]
        assert sum(sizes) == 299 and min(sizes) > 50, f"keys per master: {sizes}"
        key = store.key(entities[1], GROUP)
        assert key_slot(key.encode()) == key_slot(f"{{{entities[1]}}}".encode()), "the entity is the hash tag"


@pytest.mark.slow
@pytest.mark.spark
def test_engines_die_with_their_owner_under_sigkill(tmp_path):
    """A process starts the three engines and is killed with SIGKILL: every server process exits."""
    pids_file = tmp_path / "pids.json"
    owner = textwrap.dedent(
        f"""
        import json, time
        from pathlib import Path
        from common.runtime.mlflow_server import MlflowServer
        from common.runtime.redis_cluster import RedisClusterServers
        from common.runtime.spark_standalone import SparkStandalone, alive_workers
        spark = SparkStandalone(directory=Path({str(tmp_path / "spark")!r}), workers=1).start()
        redis = RedisClusterServers(directory=Path({str(tmp_path / "redis")!r})).start()
        mlflow = MlflowServer(directory=Path({str(tmp_path / "mlflow")!r})).start()
        pids = [p.pid for p in spark.processes] + [n.process.pid for n in redis.nodes] + [mlflow.process.pid]
        # `mlflow server` runs uvicorn as a child process of its own: it must go too
        pids += [int(c) for c in Path(f"/proc/{{mlflow.process.pid}}/task/{{mlflow.process.pid}}/children").read_text().split()]
        Path({str(pids_file)!r}).write_text(json.dumps({{"pids": pids, "workers": alive_workers(spark.ui_url)}}))
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", owner], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 240
        while not pids_file.is_file():
            assert process.poll() is None, "the owner failed to start the engines"
            assert time.monotonic() < deadline, "the engines did not start within 240 s"
            time.sleep(0.5)
        started = json.loads(pids_file.read_text())
        # master, worker, 3 Redis nodes, `mlflow server` and its uvicorn
        assert started["workers"] == 1 and len(started["pids"]) == 7
        assert all(alive(pid) for pid in started["pids"])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert _wait_gone(started["pids"], timeout=60) == []
