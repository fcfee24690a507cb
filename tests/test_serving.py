"""The REST prediction service: parity with batch scoring, security, robustness, reload, probes, metrics.

Real components: the churn model trained on the demo data (MLflow sqlite store),
a real Redis filled with the latest feature history rows at or before ``AT``,
FastAPI's TestClient over the real app. The lake's data ends 2026-01-15, so the
app gets a fixed clock (``AT``) instead of now.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import mlflow
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pyspark.sql import functions as F

from common.compile.plan import FEATURE_TS
from common.features import offline
from common.lake.paths import history_path
from common.models import registry
from common.online.base import OnlineGroup
from common.online.redis_store import RedisOnlineStore
from common.serving.app import create_app
from common.serving.auth import ApiKeys
from common.serving.config import ServingConfig
from common.serving.schemas import PredictResponse

AT = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)
# Test keys, not secrets: generated for these tests only.
OPS_KEY = "ops-test-key-7f3a9c1e5b2d8f4a6c0e"
SCREEN_KEY = "screen-test-key-2b8d4f6a0c1e3a5b7d9f"
OTHER_KEY = "other-test-key-9e7c5a3b1d0f2e4c6a8b"
KEYS_TEXT = f"ops:{OPS_KEY}\nscreen:{SCREEN_KEY}:churn,churn_reload\n# comment\nother:{OTHER_KEY}:upsell"
REDIS_SECRET = "redis-test-password-5c7e9a1b3d"
OPS = {"X-API-Key": OPS_KEY}
DB = 7  # a database of the shared Redis of its own: other tests flush db 0


def _db_url(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


@pytest.fixture(scope="module")
def latest_rows(spark, trained_churn):
    """Per feature group of the churn model: each entity's latest history row at or before AT (pandas)."""
    plan = trained_churn.plan
    spec = plan.model("churn").feature_spec
    rows = {}
    for group in spec.groups:
        group_plan = plan.group(group.name)
        key = group_plan.entity_key
        history = offline.load_history(spark, history_path(trained_churn.work, group_plan))
        newest = offline.latest_rows(history.where(F.col(FEATURE_TS) <= F.lit(AT)), group_plan, per_entity=True)
        latest = newest.select(key, FEATURE_TS, *group.feature_names)
        rows[group.name] = (OnlineGroup(group.name, group.feature_names, group.ttl_s), latest.toPandas())
    return rows


def _fill(url: str, plan, rows) -> None:
    """Write the latest rows into the online store at ``url`` (what the stream would have written)."""
    groups = [group for group, _ in rows.values()]
    with RedisOnlineStore(url, usecase=plan.usecase, version=plan.version, groups=groups) as store:
        for group, frame in rows.values():
            store.write_frame(group, frame, entity_column="customer_id", event_time_column=FEATURE_TS)


@pytest.fixture(scope="module")
def online_url(redis_url, trained_churn, latest_rows):
    """The shared Redis (database DB), filled with the churn features as of AT."""
    import redis

    url = _db_url(redis_url, DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    _fill(url, trained_churn.plan, latest_rows)
    yield url
    client.flushdb()
    client.close()


@contextmanager
def serving(work, url: str, models=("churn",), **settings):
    """A TestClient over the real app (startup and shutdown included)."""
    config = ServingConfig(models=tuple(models), usecase="churn", redis_url=url, **settings)
    app = create_app(config, work=work, keys=ApiKeys.parse(KEYS_TEXT), clock=lambda: AT)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def api(trained_churn, online_url):
    with serving(trained_churn.work, online_url, max_batch=50) as client:
        yield client


def _keys(latest_rows, count: int) -> list[str]:
    frame = latest_rows["activity"][1]
    return sorted(frame["customer_id"])[:count]


def _predict(client, entities, headers=OPS, model="churn", **extra):
    return client.post(f"/v1/models/{model}/predict", json={"entities": entities, **extra}, headers=headers)


# -- parity -------------------------------------------------------------------


def test_rest_scores_equal_batch_scoring_at_the_same_time_and_version(spark, trained_churn, api, latest_rows):
    from common.models.scoring import score_batch

    keys = [*_keys(latest_rows, 25), "C99999999"]  # the last one has no features at all
    response = _predict(api, [{"customer_id": k} for k in keys])
    assert response.status_code == 200, response.text
    body = PredictResponse.model_validate(response.json())  # the hand-built JSON follows the schema
    assert (body.model, body.alias, body.as_of) == ("churn", "champion", "2026-01-14T12:00:00Z")
    assert [p.key for p in body.predictions] == keys

    entities = spark.createDataFrame([(k,) for k in keys], "customer_id string")
    ref, written, _ = score_batch(spark, trained_churn.plan, "churn@champion", AT, trained_churn.work, entities)
    batch = {row["customer_id"]: row["score"] for row in written.collect()}
    assert body.version == ref.version == trained_churn.outcome.version
    for prediction in body.predictions:
        assert prediction.score == pytest.approx(batch[prediction.key], abs=1e-9), prediction.key
    assert len({round(p.score, 6) for p in body.predictions}) > 5  # real, different scores
    # both paths scored with the fast predictor training logged and checked, not the estimator's predict_proba
    served = api.app.state.holder.current("churn").python_model
    assert served.fast is not None and served.fast.kind == "hist_gradient_boosting"
    assert mlflow.get_run(trained_churn.outcome.run_id).data.params["fast_predictor"] == "hist_gradient_boosting"


def test_concurrent_requests_share_one_lookup_and_model_call_and_keep_their_scores(api, latest_rows):
    """Requests in flight together are scored in one batch (common.serving.batcher), each exactly as alone."""
    import asyncio

    import httpx

    keys = _keys(latest_rows, 9)
    singles, pair = [[{"customer_id": k}] for k in keys[:6]], [{"customer_id": k} for k in keys[6:]]
    alone = [_predict(api, entities).json()["predictions"] for entities in [*singles, pair]]
    batcher = api.app.state.serving.service.batcher
    before = (batcher.batches, batcher.requests)

    async def together():
        transport = httpx.ASGITransport(app=api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loom") as client:
            calls = [
                client.post("/v1/models/churn/predict", json={"entities": entities}, headers=OPS)
                for entities in [*singles, pair, [{"no_key": 1}]]  # the last one is refused (422) on its own
            ]
            return await asyncio.gather(*calls)

    answers = api.portal.call(together)
    assert [a.status_code for a in answers] == [200] * 7 + [422], [a.text for a in answers]
    assert "customer_id" in answers[-1].text
    assert batcher.requests - before[1] == 7  # the refused request never reached a batch
    assert batcher.batches - before[0] < 7  # shared batches, not one per request
    for answer, expected in zip(answers[:7], alone, strict=True):
        got = answer.json()["predictions"]
        assert [p["key"] for p in got] == [p["key"] for p in expected]
        assert [p["score"] for p in got] == [p["score"] for p in expected]  # bit for bit
        assert [p["feature_times"] for p in got] == [p["feature_times"] for p in expected]


def test_response_shows_feature_times_and_missing_features(api, latest_rows):
    key = _keys(latest_rows, 1)[0]
    _, activity = latest_rows["activity"]
    expected = activity.loc[activity["customer_id"] == key, FEATURE_TS].iloc[0]
    body = _predict(api, [{"customer_id": key}, {"customer_id": "nobody-at-all"}]).json()
    known, unknown = body["predictions"]
    assert known["known"] is True
    assert known["feature_times"]["activity"] == expected.tz_localize("UTC").isoformat().replace("+00:00", "Z")
    assert set(known["feature_times"]) == {"activity", "profile"}
    assert all(name in _lookup_features(api) for name in known["missing"])
    # an unknown entity: 200, flagged, every feature missing, still a score (the model takes NaN)
    assert unknown["known"] is False
    assert unknown["feature_times"] == {"activity": None, "profile": None}
    assert unknown["missing"] == list(_lookup_features(api))
    assert 0.0 <= unknown["score"] <= 1.0


def _lookup_features(client) -> tuple[str, ...]:
    return client.app.state.holder.current("churn").spec.lookup_features


# -- security -----------------------------------------------------------------


def test_api_keys_are_required_and_scoped(api, latest_rows, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    entities = [{"customer_id": _keys(latest_rows, 1)[0]}]
    wrong = "not-a-key-of-this-server-123"
    answers = [no_key := _predict(api, entities, headers={})]
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
    answers.append(_predict(api, entities, headers={"X-API-Key": wrong}))
    answers.append(_predict(api, entities, headers={"Authorization": "Basic " + OPS_KEY}))
    answers.append(_predict(api, entities, headers={"X-API-Key": OPS_KEY[:-1]}))  # a prefix is no key
    assert [a.status_code for a in answers[1:]] == [401, 401, 401]
    answers.append(forbidden := _predict(api, entities, headers={"X-API-Key": OTHER_KEY}))
    assert forbidden.status_code == 403 and "(other)" in forbidden.json()["detail"]  # the key's name, not the key
    assert _predict(api, entities, headers={"Authorization": f"Bearer {SCREEN_KEY}"}).status_code == 200
    assert _predict(api, entities, headers={"X-API-Key": SCREEN_KEY}).status_code == 200
    # 403 before 404: a restricted key learns nothing about other models
    answers.append(hidden := _predict(api, entities, headers={"X-API-Key": SCREEN_KEY}, model="secret_model"))
    assert hidden.status_code == 403
    # the body of an unauthenticated request is not even parsed
    assert api.post("/v1/models/churn/predict", content=b"{not json", headers={}).status_code == 401
    assert api.get("/metrics").status_code == 401
    captured = capsys.readouterr()
    for text in [*(a.text for a in answers), caplog.text, captured.out, captured.err]:
        for secret in (OPS_KEY, OPS_KEY[:-1], SCREEN_KEY, OTHER_KEY, wrong):
            assert secret not in text


def test_key_file_and_bad_key_configs(tmp_path, monkeypatch):
    from common.errors import ConfigError

    path = tmp_path / "keys"
    path.write_text(KEYS_TEXT)
    monkeypatch.delenv("LOOM_API_KEYS", raising=False)
    monkeypatch.setenv("LOOM_API_KEYS_FILE", str(path))
    keys = ApiKeys.from_env()
    assert keys.authenticate(SCREEN_KEY).name == "screen" and keys.authenticate(SCREEN_KEY).allows("churn")
    assert not keys.authenticate(OTHER_KEY).allows("churn") and keys.authenticate(OPS_KEY).models is None
    assert keys.authenticate("") is None and keys.authenticate(None) is None
    assert OPS_KEY not in repr(keys) and OPS_KEY not in repr(keys._entries)
    for text, words in (
        ("", "no API key"),
        ("short:abc", "at least 16"),
        (f"{OPS_KEY}", "not name:key"),
        (f"a:{OPS_KEY}\na:{SCREEN_KEY}", "used twice"),
        (f"a:{OPS_KEY}\nb:{OPS_KEY}", "already given"),
    ):
        with pytest.raises(ConfigError, match=words) as caught:
            ApiKeys.parse(text)
        assert OPS_KEY not in str(caught.value)


def test_a_worker_started_while_its_redis_cluster_is_away_is_not_ready_then_serves(
    trained_churn, latest_rows, tmp_path, monkeypatch
):
    """With LOOM_REDIS_CLUSTER on and the seed node of REDIS_URL down, the app still starts: /healthz 200,
    /readyz and predictions 503 + Retry-After. Once the node is back, the same worker serves, with the
    features written to the cluster."""
    from common.runtime.redis_cluster import CLUSTER_ENV, RedisClusterServers
    from common.serving import redis_reads

    monkeypatch.setenv(CLUSTER_ENV, "1")
    monkeypatch.setattr(redis_reads, "RETRY_OPEN_AFTER_S", 0.0)  # each call below tries the cluster again
    keys = _keys(latest_rows, 3)
    entities = [{"customer_id": k} for k in keys]
    with RedisClusterServers(directory=tmp_path / "cluster") as cluster:
        cluster.nodes[0].stop()  # REDIS_URL names this node: the client cannot learn the slot map at start
        with serving(trained_churn.work, cluster.url, redis_timeout_s=0.3, retry_after_s=2) as client:
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["redis"] is False
            down = _predict(client, entities)
            assert down.status_code == 503 and down.headers["retry-after"] == "2", down.text
            cluster.restart(0)
            _fill(cluster.url, trained_churn.plan, latest_rows)
            assert client.get("/readyz").status_code == 200
            served = _predict(client, entities)
    assert served.status_code == 200, served.text
    assert all(p["known"] for p in served.json()["predictions"])


def test_redis_acl_user_password_file_outage_and_recovery(
    trained_churn, latest_rows, tmp_path, monkeypatch, caplog, capsys
):
    """Redis with an ACL user whose password comes from a file; stopped mid-test: 503 + Retry-After, then recovery.
    No secret appears in any log line or response."""
    import redis

    from common.runtime.redis_server import RedisServer

    password_file = tmp_path / "redis-password"
    password_file.write_text(REDIS_SECRET + "\n")
    monkeypatch.setenv("REDIS_USERNAME", "loom-serving")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(password_file))
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)

    def start(port=None) -> RedisServer:
        server = RedisServer(port=port) if port else RedisServer()
        server.start()
        admin = redis.Redis(port=server.port)
        admin.execute_command("ACL", "SETUSER", "loom-serving", "on", f">{REDIS_SECRET}", "~*", "+@all")
        admin.execute_command("ACL", "SETUSER", "default", "off")  # only the ACL user may connect
        admin.close()
        _fill_as_user(server.url)
        return server

    def _fill_as_user(url: str) -> None:
        from common.runtime.redis_server import connect

        client = connect(url)  # REDIS_USERNAME + REDIS_PASSWORD_FILE
        groups = [group for group, _ in latest_rows.values()]
        plan = trained_churn.plan
        with RedisOnlineStore(usecase=plan.usecase, version=plan.version, groups=groups, client=client) as store:
            for group, frame in latest_rows.values():
                store.write_frame(group, frame, entity_column="customer_id", event_time_column=FEATURE_TS)
        client.close()

    caplog.set_level(logging.DEBUG)
    server = start()
    port = server.port
    entities = [{"customer_id": k} for k in _keys(latest_rows, 3)]
    texts = []
    try:
        with serving(trained_churn.work, server.url, redis_timeout_s=0.3, retry_after_s=2) as client:
            before = _predict(client, entities)
            assert before.status_code == 200, before.text
            assert client.get("/readyz").json() == {"ready": True, "redis": True, "models": {"churn": 1}}
            server.stop()
            down = _predict(client, entities)
            assert down.status_code == 503 and down.headers["retry-after"] == "2"
            assert "unavailable" in down.json()["detail"]
            assert client.get("/healthz").status_code == 200  # the process stays up
            assert client.get("/readyz").status_code == 503
            server = start(port)
            after = _predict(client, entities)
            assert after.status_code == 200, after.text
            assert after.json()["predictions"] == before.json()["predictions"]
            assert client.get("/readyz").status_code == 200
            texts += [before.text, down.text, after.text, client.get("/metrics", headers=OPS).text]
    finally:
        server.stop()
    captured = capsys.readouterr()
    texts += [caplog.text, captured.out, captured.err]
    assert "online store unavailable" in caplog.text  # the outage was logged ...
    for text in texts:  # ... but no secret, anywhere
        for secret in (REDIS_SECRET, OPS_KEY, SCREEN_KEY, OTHER_KEY):
            assert secret not in text


# -- robustness -----------------------------------------------------------------


def test_bad_requests_get_422_naming_the_field(api):
    def post(content: bytes | None = None, body=None):
        response = api.post("/v1/models/churn/predict", content=content, json=body, headers=OPS)
        assert response.status_code == 422, response.text
        return response.json()["detail"]

    malformed = post(content=b'{"entities": [{"customer_id": "C1"}')
    assert malformed[0]["type"] == "json_invalid" and malformed[0]["loc"][0] == "body"
    assert post(content=b"")[0]["type"] == "json_invalid"
    assert post(body={"entities": "C00000001"})[0]["loc"] == ["body", "entities"]
    assert post(body={"entities": []})[0]["loc"] == ["body", "entities"]
    assert post(body={"customers": [{"customer_id": "C1"}]})[0]["loc"][:2] in (
        ["body", "entities"],
        ["body", "customers"],
    )
    assert post(body={"entities": [{"customer_id": "C1"}], "version": "two"})[0]["loc"] == ["body", "version"]
    assert post(body={"entities": [{"customer_id": "C1"}], "version": 0})[0]["loc"] == ["body", "version"]
    nested = post(body={"entities": [{"customer_id": {"id": 1}}]})
    assert all(e["loc"][:4] == ["body", "entities", 0, "customer_id"] for e in nested)
    assert post(body={"entities": [{"customer_id": "C1"}, {}]})[0]["loc"] == ["body", "entities", 1, "customer_id"]
    assert post(body={"entities": [{"customer_id": 1.5}]})[0]["loc"] == ["body", "entities", 0, "customer_id"]
    assert post(body={"entities": [{"customer_id": ""}]})[0]["loc"] == ["body", "entities", 0, "customer_id"]
    extra = post(body={"entities": [{"customer_id": "C1", "tenure_days": 3}]})[0]
    assert extra["loc"] == ["body", "entities", 0, "tenure_days"] and extra["type"] == "extra_forbidden"


def test_batch_limit_unknown_model_and_version(api, latest_rows):
    keys = _keys(latest_rows, 1)
    too_many = _predict(api, [{"customer_id": f"C{i}"} for i in range(51)])
    assert too_many.status_code == 413 and "at most 50" in too_many.json()["detail"]
    huge = api.post(
        "/v1/models/churn/predict", content=b" " * 300_000, headers={**OPS, "content-type": "application/json"}
    )
    assert huge.status_code == 413
    assert _predict(api, [{"customer_id": f"C{i}"} for i in range(50)]).status_code == 200
    unknown = _predict(api, [{"customer_id": keys[0]}], model="no_such_model")
    assert unknown.status_code == 404 and "not served" in unknown.json()["detail"]
    assert _predict(api, [{"customer_id": keys[0]}], version=99).status_code == 404
    assert api.get("/v1/models/churn/predict", headers=OPS).status_code == 405
    pinned = _predict(api, [{"customer_id": keys[0]}], version=1)
    assert pinned.status_code == 200 and pinned.json()["version"] == 1 and pinned.json()["alias"] is None


# -- reload, probes, metrics, OpenAPI -------------------------------------------


def _log_version(work, name: str, spec, estimator) -> int:
    """Register a Loom pyfunc (``spec`` + ``estimator``) as a new version of ``name``."""
    import tempfile
    from pathlib import Path

    import joblib

    from common.models.pyfunc import ESTIMATOR, FEATURE_SPEC, LoomModel
    from common.runtime.tracking import experiment

    with tempfile.TemporaryDirectory() as folder:
        joblib.dump(estimator, Path(folder) / "estimator.joblib")
        (Path(folder) / "feature_spec.json").write_text(spec.to_json())
        with mlflow.start_run(experiment_id=experiment("loom-serving-tests", work)):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=LoomModel(),
                artifacts={ESTIMATOR: f"{folder}/estimator.joblib", FEATURE_SPEC: f"{folder}/feature_spec.json"},
                pip_requirements=["scikit-learn"],
            )
    return int(mlflow.register_model(info.model_uri, name).version)


def test_server_follows_the_alias_without_restart(trained_churn, online_url, latest_rows):
    from sklearn.ensemble import HistGradientBoostingClassifier

    from common.runtime.tracking import configure

    work, name = trained_churn.work, "churn_reload"
    configure(work)
    champion = mlflow.pyfunc.load_model("models:/churn/1").unwrap_python_model()
    spec = champion.feature_spec
    client = registry.client(work)
    first = _log_version(work, name, spec, champion.estimator)
    registry.promote(name, first, "serving test: first", client)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, len(spec.inputs)))
    other = HistGradientBoostingClassifier(max_iter=5, random_state=1).fit(x, (x[:, 0] > 0).astype(int))
    second = _log_version(work, name, spec, other)
    entities = [{"customer_id": k} for k in _keys(latest_rows, 5)]

    with serving(work, online_url, models=(name,), reload_interval_s=0.2) as api:
        before = _predict(api, entities, model=name).json()
        assert before["version"] == first
        registry.promote(name, second, "serving test: second", client)
        deadline = time.monotonic() + 30
        while (after := _predict(api, entities, model=name).json())["version"] != second:
            assert time.monotonic() < deadline, "the server did not follow @champion"
            time.sleep(0.1)
        # the new version's own pyfunc made the scores: same features, its estimator
        from common.models.online_features import lookup

        loaded = api.app.state.holder.current(name)
        independent = mlflow.pyfunc.load_model(f"models:/{name}/{second}").unwrap_python_model()
        frame = lookup(loaded.store, spec, [e["customer_id"] for e in entities], int(AT.timestamp() * 1e6)).frame
        expected = independent.predict_features(frame)
        assert [p["score"] for p in after["predictions"]] == pytest.approx(list(expected), abs=1e-12)
        assert [p["score"] for p in after["predictions"]] != [p["score"] for p in before["predictions"]]
        # an explicit version still reaches the old one
        pinned = _predict(api, entities, model=name, version=first).json()
        assert [p["score"] for p in pinned["predictions"]] == [p["score"] for p in before["predictions"]]
        text = api.get("/metrics", headers=OPS).text
        assert f'loom_serving_model_version{{alias="champion",model="{name}"}} {float(second)}' in text
        assert f'loom_serving_model_loads_total{{model="{name}"}} 2.0' in text


def test_readyz_reports_a_model_without_alias(trained_churn, online_url):
    with serving(trained_churn.work, online_url, models=("churn", "never_trained")) as api:
        assert api.get("/healthz").json() == {"status": "ok"}
        ready = api.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "redis": True, "models": {"churn": 1, "never_trained": None}}
        waiting = _predict(api, [{"customer_id": "C1"}], model="never_trained")
        assert waiting.status_code == 503 and waiting.headers["retry-after"] == "1"
        assert _predict(api, [{"customer_id": "C1"}]).status_code == 200


def test_metrics_count_requests_latency_errors_and_version(api, latest_rows):
    _predict(api, [{"customer_id": _keys(latest_rows, 1)[0]}])
    _predict(api, [{"customer_id": "C1"}], headers={})
    response = api.get("/metrics", headers={"Authorization": f"Bearer {OPS_KEY}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text

    def value(line_start: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(line_start))
        return float(line.rsplit(" ", 1)[1])

    assert value('loom_serving_requests_total{endpoint="predict",model="churn",status="200"}') >= 1
    assert value('loom_serving_errors_total{endpoint="predict",model="churn",reason="unauthorized"}') >= 1
    assert value('loom_serving_request_seconds_count{endpoint="predict",model="churn"}') >= 2
    assert 'loom_serving_request_seconds_bucket{endpoint="predict",le="0.0025",model="churn"}' in text
    assert value('loom_serving_model_version{alias="champion",model="churn"}') == 1.0
    assert value('loom_serving_entities_total{model="churn"}') >= 1


def test_openapi_describes_the_endpoint_and_its_security(api):
    document = api.get("/openapi.json").json()
    operation = document["paths"]["/v1/models/{model}/predict"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"entities", "version"} <= set(body["properties"]) and body["required"] == ["entities"]
    assert {"200", "401", "403", "404", "413", "422", "503"} <= set(operation["responses"])
    assert {"APIKeyHeader", "HTTPBearer"} <= set(document["components"]["securitySchemes"])
    assert "/metrics" in document["paths"] and "/readyz" in document["paths"]


def test_serve_job_checks_its_setup_before_starting(monkeypatch, capsys):
    from jobs import serve
    from jobs.runner import main_for

    monkeypatch.delenv("LOOM_API_KEYS", raising=False)
    monkeypatch.delenv("LOOM_API_KEYS_FILE", raising=False)
    assert main_for("serve", serve, ["--usecase", "churn"]) == 2
    assert "LOOM_API_KEYS" in capsys.readouterr().err
    monkeypatch.setenv("LOOM_API_KEYS", f"ops:{OPS_KEY}")
    assert main_for("serve", serve, ["--usecase", "churn", "--model", "no_such_model"]) == 2
    assert "no_such_model" in capsys.readouterr().err


def test_serve_job_starts_a_worker_per_core_with_a_bounded_queue(monkeypatch):
    import os

    import uvicorn

    from jobs import serve
    from jobs.runner import main_for

    started = []
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the job exports its settings for the workers
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: started.append(kwargs))  # not a real server here
    monkeypatch.setenv("LOOM_API_KEYS", f"ops:{OPS_KEY}")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert main_for("serve", serve, ["--usecase", "churn", "--max-queue", "8"]) == 0
    assert started[0]["workers"] == (os.cpu_count() or 1)
    assert ServingConfig.from_env(os.environ).max_queue == 8
    assert main_for("serve", serve, ["--usecase", "churn", "--workers", "1", "--max-queue", "0"]) == 2
