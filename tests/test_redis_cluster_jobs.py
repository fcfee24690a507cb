"""Every job's Redis path on a real Redis Cluster (three masters on 127.0.0.1), switched by ``LOOM_REDIS_CLUSTER=1``.

The churn lake (conftest) is published once by the materializer, whose executors write through the
event-time guard, into the cluster and into a single redis-server of this module; then the REST service,
the consistency check and ``loom forget``'s Redis step run against the cluster and are compared with the
single node. The Spark workers of ``local[2]`` never see the driver's ``LOOM_REDIS_CLUSTER`` (it is set
after the JVM started): the flag reaches them with the write function, as the URL does.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from common.errors import ConfigError, StoreError
from common.features.consistency import check_group
from common.features.online_sink import open_store
from common.features.publish import materialize
from common.models.online_features import online_groups
from common.online.base import OnlineGroup, get_online_store
from common.online.predictions import LatestPrediction, prediction_key, write_latest
from common.online.redis_health import silent_nodes, store_outage
from common.online.redis_store import RedisOnlineStore, groups_without_vectors, redis_key
from common.privacy_lifecycle.forget import forget_redis
from common.runtime.redis_cluster import CLUSTER_ENV, RedisClusterServers
from common.runtime.redis_server import RedisServer, connect, masters, redis_url
from common.serving.app import create_app
from common.serving.auth import ApiKeys
from common.serving.config import ServingConfig, open_redis
from common.serving.redis_reads import DirectReads

END = datetime(2026, 1, 15, tzinfo=UTC)  # the churn lake's data end (conftest DEMO_END): after every event
OPS_KEY = "ops-test-key-cluster-4d2b6f8a0c1e"  # a test key, not a secret


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with RedisClusterServers(directory=tmp_path_factory.mktemp("redis-cluster")) as servers:
        yield servers


@pytest.fixture(scope="module")
def single():
    """A redis-server of this module (the worker's shared one is flushed by other modules)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def published(spark, churn_lake, cluster, single):
    """The churn lake's online groups as of END, materialized into the cluster and into the single node."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(CLUSTER_ENV, "1")
        on_cluster = materialize(spark, churn_lake.work, churn_lake.plan, END, cluster.url)
        env.setenv(CLUSTER_ENV, "0")
        on_single = materialize(spark, churn_lake.work, churn_lake.plan, END, single.url)
    return {"cluster": on_cluster, "single": on_single}


def test_connect_follows_loom_redis_cluster_and_says_what_is_wrong(cluster, single, monkeypatch):
    monkeypatch.setenv(CLUSTER_ENV, "1")
    assert isinstance(connect(cluster.url), redis.RedisCluster)
    with pytest.raises(StoreError, match=f"cannot reach a Redis Cluster.*unset {CLUSTER_ENV}"):
        connect(single.url)  # a single server is not a cluster: one clear error, not MOVED replies later
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match="REDIS_URL is not set"):
        redis_url()  # Loom starts single servers only: it must not start one for a cluster
    monkeypatch.setenv(CLUSTER_ENV, "0")
    assert type(connect(single.url)) is redis.Redis
    with pytest.raises(StoreError, match=r"forget: deleting .* Fix: bring Redis back"):
        forget_redis("redis://127.0.0.1:1/0", "churn", ["C00000001"])  # nobody listens on port 1
    # a stream query that failed while its Redis does not answer: one error naming the server (common.pipeline)
    assert store_outage(single.url, "q", "churn") is None
    outage = str(store_outage("redis://127.0.0.1:1/0", "loom_churn_features_activity", "churn"))
    assert outage.startswith("the online store's Redis server 127.0.0.1:1 (REDIS_URL redis://127.0.0.1:1/0)")
    assert "query 'loom_churn_features_activity'" in outage and "loom materialize --usecase churn" in outage
    monkeypatch.setenv(CLUSTER_ENV, "perhaps")
    with pytest.raises(ConfigError, match=f"{CLUSTER_ENV}='perhaps' is not a yes/no value"):
        connect(single.url)


def test_materialized_keys_spread_over_the_three_masters(churn_lake, published, cluster, single, monkeypatch):
    entities = {r.group: r.entities for r in published["single"]}
    assert [(r.group, r.entities, r.written) for r in published["cluster"]] == [
        (r.group, r.entities, r.written) for r in published["single"]
    ]
    assert all(r.written == entities[r.group] > 500 for r in published["cluster"])
    monkeypatch.setenv(CLUSTER_ENV, "1")
    client = connect(cluster.url)
    sizes = [node.dbsize() for node in masters(client)]
    assert len(sizes) == 3 and sum(sizes) == connect(single.url, cluster=False).dbsize() == sum(entities.values())
    assert min(sizes) > sum(sizes) / 5, f"keys per master: {sizes}"
    # an entity's keys (one per group) share its hash tag's slot, on one master
    plan = churn_lake.plan
    keys = [redis_key(f"loom:{plan.usecase}:v{plan.version}:", "C00000001", g) for g in ("activity", "profile")]
    slot = client.keyslot(keys[0])
    assert client.keyslot(keys[1]) == slot and client.cluster_countkeysinslot(slot) >= 2
    # `loom serve`'s check for groups without any vector scans every master
    assert groups_without_vectors(client, plan.usecase, plan.version, ["activity", "profile"]) == []
    assert groups_without_vectors(client, plan.usecase, 99, ["activity"]) == ["activity"]


def test_rest_reads_and_predictions_on_the_cluster_equal_a_single_nodes(
    trained_churn, published, cluster, single, monkeypatch
):
    plan = trained_churn.plan
    spec = plan.model("churn").feature_spec
    entities = [f"C{i:08d}" for i in range(1, 1001)]
    blocks = {}
    for name, url, mode in (("cluster", cluster.url, "1"), ("single", single.url, "0")):
        monkeypatch.setenv(CLUSTER_ENV, mode)
        client = open_redis(url, 2.0)  # the service's opener, and its choice of reader (common.serving.context)
        reads = client if name == "cluster" else DirectReads(client)
        store = get_online_store(
            "redis", client=reads, usecase=plan.usecase, version=plan.version, groups=online_groups(spec)
        )
        assert store.cluster == (name == "cluster")
        blocks[name] = store.read_blocks(entities, [g.name for g in spec.groups])
    for group, block in blocks["single"].items():
        assert (block.event_time_us > 0).sum() > 900, group  # the comparison is not between two empty stores
        np.testing.assert_array_equal(blocks["cluster"][group].values, block.values)
        np.testing.assert_array_equal(blocks["cluster"][group].event_time_us, block.event_time_us)

    request = {"entities": [{"customer_id": k} for k in [*entities[:20], "C99999999"]]}
    answers = {}
    for name, url, mode in (("cluster", cluster.url, "1"), ("single", single.url, "0")):
        monkeypatch.setenv(CLUSTER_ENV, mode)
        config = ServingConfig(models=("churn",), usecase="churn", redis_url=url, log_predictions=False)
        app = create_app(config, work=trained_churn.work, keys=ApiKeys.parse(f"ops:{OPS_KEY}"), clock=lambda: END)
        with TestClient(app) as api:
            assert api.get("/readyz").status_code == 200
            response = api.post("/v1/models/churn/predict", json=request, headers={"X-API-Key": OPS_KEY})
        assert response.status_code == 200, response.text
        answers[name] = response.json()["predictions"]
    assert answers["cluster"] == answers["single"]
    assert sum(p["known"] for p in answers["cluster"]) == 20 and not answers["cluster"][-1]["known"]


def test_consistency_finds_no_mismatch_against_the_cluster(spark, churn_lake, published, cluster, monkeypatch):
    """`loom consistency`'s check on the cluster. One group: its reads are the same MGETs for every group, and
    recomputing `activity`'s windows costs 20-45 s on this machine, against 3-5 s for `profile`."""
    monkeypatch.setenv(CLUSTER_ENV, "1")
    groups = [g for g in churn_lake.plan.groups.values() if g.online]
    store = open_store(groups, cluster.url)  # as `loom consistency` opens it
    assert store.cluster
    try:
        report = check_group(spark, churn_lake.work, churn_lake.plan.group("profile"), store)
    finally:
        store.close()
    assert report.entities_checked > 500
    assert report.ok and report.entities_mismatched == 0 and report.missing_online == 0, report.examples
    assert all(stats.mismatches == 0 for stats in report.features.values())


def test_predictions_and_forget_on_the_cluster(churn_lake, published, cluster, single, monkeypatch):
    """The stream's latest predictions land on the cluster (and on one server); `loom forget` deletes every
    key of the person on the cluster."""
    plan = churn_lake.plan
    people = [f"C{i:08d}" for i in range(2, 42)]
    rows = [LatestPrediction(p, "churn", 1_000, 0.25, 1, "t") for p in people]
    older = [LatestPrediction(p, "churn", 999, 0.75, 1, "t") for p in people]
    for url, mode in ((single.url, "0"), (cluster.url, "1")):
        monkeypatch.setenv(CLUSTER_ENV, mode)
        client = connect(url)
        assert write_latest(client, plan.usecase, plan.version, rows) == 40
        client.script_flush()  # a restarted server forgets its scripts: the write loads it again
        assert write_latest(client, plan.usecase, plan.version, older) == 0, "an older prediction never wins"
        scores = {client.hget(prediction_key(plan.usecase, plan.version, p, "churn"), "score") for p in people}
        assert scores == {b"0.25"}

    prefix = f"loom:{plan.usecase}:v{plan.version}:"
    forgotten, kept = people[0], people[1]
    keys = [redis_key(prefix, forgotten, g) for g in ("activity", "profile")]
    keys.append(prediction_key(plan.usecase, plan.version, forgotten, "churn"))
    assert client.exists(*keys) == 3
    assert forget_redis(cluster.url, plan.usecase, [forgotten]) == 3
    assert client.exists(*keys) == 0
    assert (
        client.exists(redis_key(prefix, kept, "activity"), prediction_key(plan.usecase, plan.version, kept, "churn"))
        == 2
    )


def test_a_master_killed_during_a_write_fails_it_clearly_and_the_rewrite_after_its_restart_is_whole(
    cluster, monkeypatch
):
    """Runs last: the killed master comes back empty (the local nodes keep no data, like a cache).

    The write is two calls, as a micro-batch's partitions are: the master dies between them. The second fails
    with one StoreError; after the restart the same client (an executor keeps its client) writes again, and
    rewriting everything (`loom materialize`, since the restarted master lost the first call's keys too) gives
    exactly the clean result."""
    monkeypatch.setenv(CLUSTER_ENV, "1")
    group = OnlineGroup("killed", ("x", "y"), ttl_seconds=None)
    entities = [f"K{i:05d}" for i in range(400)]
    values = np.column_stack([np.arange(400.0), np.arange(400.0) / 3])
    times = np.full(400, 1_767_225_600_000_000)
    with RedisOnlineStore(cluster.url, usecase="killtest", version=1, groups=[group]) as store:
        assert store.write(group, entities[:200], values[:200], times[:200]).written == 200
        cluster.nodes[1].process.kill()
        with pytest.raises(StoreError, match="writing to the Redis online store failed"):
            store.write(group, entities[200:], values[200:], times[200:])
        assert silent_nodes(cluster.url) == [cluster.addresses[1]]  # what a failed stream names (common.pipeline)
        cluster.restart(1)
        assert silent_nodes(cluster.url) == []
        assert store.write(group, entities, values, times).written == 400
        read = store.read_blocks(entities, [group])["killed"]
        np.testing.assert_array_equal(read.values, values)
        np.testing.assert_array_equal(read.event_time_us, times)
        per_master = [len(list(node.scan_iter(match="loom:killtest:*", count=1000))) for node in masters(store.client)]
    assert min(per_master) > 0 and sum(per_master) == 400, f"no stale or extra key: {per_master}"
