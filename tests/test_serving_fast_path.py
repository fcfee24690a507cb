"""The plain-ASGI prediction path: its bounded queue answers 503 + Retry-After, and it hands errors to the app;
its batched metrics and its direct MGET.

Unit tests: the ASGI middleware around a recording inner app and a small service whose predictions
wait until the test lets them finish; the metrics against Prometheus' own observe; the MGET on a real Redis.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from fastapi import HTTPException

from common.serving.fast_path import FAST_PATH_ERROR, FastPredictPath, predict_model, presented_key
from common.serving.predict_service import Answer


class _Service:
    def __init__(self) -> None:
        self.config = SimpleNamespace(retry_after_s=3)
        self.body_limit = 1000
        self.release = asyncio.Event()
        self.started = 0

    def authenticate(self, presented):
        if presented != "good-key-0123456789":
            raise HTTPException(401, "no key")
        return SimpleNamespace(name="c")

    def check_access(self, model, client):
        return None

    def too_large(self, size):
        return HTTPException(413, "too large")

    async def predict(self, model, client, body):
        self.started += 1
        await self.release.wait()
        return Answer(b'{"ok":true}', "rid-1")


def _scope(path="/v1/models/churn/predict", key="good-key-0123456789"):
    return {"type": "http", "method": "POST", "path": path, "headers": [(b"x-api-key", key.encode())]}


async def _call(app, scope, body=b"{}"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_a_full_queue_answers_503_with_retry_after_and_admits_again_once_drained():
    async def scenario():
        inner_calls = []

        async def inner(scope, receive, send):
            inner_calls.append(scope)

        service = _Service()
        app = FastPredictPath(inner, service, max_queue=2)
        first = asyncio.create_task(_call(app, _scope()))
        second = asyncio.create_task(_call(app, _scope()))
        await asyncio.sleep(0.01)
        assert service.started == 2 and app.admitted == 2
        status, headers, body = await _call(app, _scope())  # the third: refused at once, nothing started
        assert status == 503 and headers[b"retry-after"] == b"3" and b"retry later" in body
        assert service.started == 2
        service.release.set()
        answers = await asyncio.gather(first, second)
        assert [a[0] for a in answers] == [200, 200] and answers[0][1][b"x-request-id"] == b"rid-1"
        assert app.admitted == 0
        assert (await _call(app, _scope()))[0] == 200  # admitted again
        assert inner_calls == []  # no error, nothing handed over

    asyncio.run(scenario())


def test_errors_and_other_paths_go_to_the_app_with_the_exception():
    async def scenario():
        seen = []

        async def inner(scope, receive, send):
            seen.append((scope["path"], scope.get(FAST_PATH_ERROR), (await receive())["body"]))
            await send({"type": "http.response.start", "status": 599, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        app = FastPredictPath(inner, _Service(), max_queue=2)
        assert (await _call(app, _scope(key="wrong-key-0123456789")))[0] == 599
        assert seen[-1][1].status_code == 401
        assert (await _call(app, _scope(), body=b"x" * 2000))[0] == 599
        assert seen[-1][1].status_code == 413
        assert (await _call(app, _scope(path="/healthz")))[0] == 599
        assert seen[-1][0] == "/healthz" and seen[-1][1] is None

    asyncio.run(scenario())


def test_request_parts():
    assert predict_model({"method": "POST", "path": "/v1/models/churn/predict"}) == "churn"
    assert predict_model({"method": "GET", "path": "/v1/models/churn/predict"}) is None
    assert predict_model({"method": "POST", "path": "/v1/models/a/b/predict"}) is None
    assert presented_key([(b"authorization", b"Bearer k1")]) == "k1"
    assert presented_key([(b"authorization", b"Basic k1")]) is None
    assert presented_key([(b"authorization", b"Bearer k1"), (b"x-api-key", b"k2")]) == "k2"


def test_batched_metrics_publish_what_prometheus_observe_would():
    from prometheus_client import generate_latest

    from common.serving.metrics import LATENCY_BUCKETS, ServingMetrics

    seconds = [0.0004, 0.0005, 0.0011, 0.0025, 0.004, 0.02, 3.0, *LATENCY_BUCKETS]
    batched, direct = ServingMetrics(), ServingMetrics()

    async def serve() -> None:  # on an event loop, as in a worker: the flush is due a second later
        for index, took in enumerate(seconds):
            status = 200 if index % 3 else 401
            batched.observe("predict", "churn", status, took)
            direct.requests.labels("predict", "churn", str(status)).inc()
            direct.latency.labels("predict", "churn").observe(took)
            if status >= 400:
                direct.errors.labels("predict", "churn", "unauthorized").inc()
        batched.scored("churn", 7, 2)
        direct.entities.labels("churn").inc(7)
        direct.missing.labels("churn").inc(2)

    asyncio.run(serve())
    assert b"loom_serving_requests_total{" not in generate_latest(batched.registry)  # not published yet
    published = []
    batched.on_flush(lambda: published.append(True))

    def samples(metrics):
        return sorted(
            line
            for line in generate_latest(metrics.registry).decode().splitlines()
            if line.startswith("loom_serving_") and "_created" not in line
        )

    assert samples(batched) != samples(direct)
    assert batched.render() and published == [True]  # /metrics publishes the worker's tallies first
    assert samples(batched) == samples(direct)


def test_direct_mget_answers_as_redis_py_and_survives_a_killed_connection(redis_client):
    from common.serving.redis_reads import DirectReads

    redis_client.set(b"loom:a", b"\x00\x01vector")
    redis_client.set(b"loom:b", b"")
    redis_client.sadd(b"loom:set", b"x")
    reads = DirectReads(redis_client)
    keys = [b"loom:a", b"loom:missing", b"loom:b", b"loom:set"]
    assert reads.mget(keys) == redis_client.mget(keys) == [b"\x00\x01vector", None, b"", None]
    assert reads.connection_pool is redis_client.connection_pool and reads.ping()
    assert redis_client.client_kill_filter(_type="normal", skipme=False) >= 1  # the server drops every client
    assert reads.mget(keys[:1]) == [b"\x00\x01vector"]  # a new connection, the same answer


def test_batched_metrics_reach_prometheus_on_their_own_on_a_running_loop(monkeypatch):
    from prometheus_client import generate_latest

    from common.serving import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "FLUSH_S", 0.01)
    metrics = metrics_module.ServingMetrics()
    line = b'loom_serving_requests_total{endpoint="predict",model="churn",status="200"} 2.0'

    async def serve() -> None:
        metrics.observe("predict", "churn", 200, 0.001)
        metrics.observe("predict", "churn", 200, 0.001)
        assert line not in generate_latest(metrics.registry)
        await asyncio.sleep(0.2)  # the flush timer, without any /metrics call
        assert line in generate_latest(metrics.registry)

    asyncio.run(serve())


def test_a_pending_cluster_client_is_made_on_first_use_and_retried_at_most_once_a_pause(monkeypatch):
    """The service's Redis Cluster client (common.serving.redis_reads.PendingCluster): while the cluster is
    away, a use raises redis-py's ConnectionError (the store's StoreError, the service's 503), and a new
    attempt is made only after the pause; once made, the client is kept."""
    import pytest
    from redis.exceptions import ConnectionError as RedisConnectionError

    from common.errors import StoreError
    from common.serving import redis_reads

    now = [100.0]
    monkeypatch.setattr(redis_reads.time, "monotonic", lambda: now[0])
    attempts, reachable = [], [False]
    client = SimpleNamespace(ping=lambda: True, close=lambda: attempts.append("closed"))

    def open_cluster():
        attempts.append("open")
        if not reachable[0]:
            raise StoreError("cannot reach a Redis Cluster at 127.0.0.1:1")
        return client

    pending = redis_reads.PendingCluster(open_cluster)
    pending.close()  # never made: nothing to close
    with pytest.raises(RedisConnectionError, match="cannot reach a Redis Cluster"):
        pending.ping()
    reachable[0] = True
    with pytest.raises(RedisConnectionError):  # within the pause: no new attempt
        pending.ping()
    assert attempts == ["open"]
    now[0] += redis_reads.RETRY_OPEN_AFTER_S
    assert pending.ping() is True and pending.ping() is True
    pending.close()
    assert attempts == ["open", "open", "closed"]
