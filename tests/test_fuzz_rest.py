"""REST fuzz (issue 20): hostile requests get 4xx, never 5xx; no prediction without a valid key; no traceback.

Hypothesis generates 2,000 requests (fixed seed) against the real app (trained churn model, real
Redis) through FastAPI's TestClient: methods, paths, API keys (none, wrong, right, as a bearer),
extra headers, and bodies that are valid, hostile JSON (NaN, Infinity, 1e400, huge integers,
deep nesting, wrong types) or not JSON at all (random and non-UTF-8 bytes). A real uvicorn
server (httptools, as ``loom serve`` runs it) then gets a 4 MB header and 10,000 headers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from common.runtime.processes import free_port
from common.serving.app import create_app
from common.serving.auth import ApiKeys
from common.serving.config import ServingConfig

# Test keys, not secrets: generated for these tests only.
GOOD_KEY = "fuzz-good-key-4d2c9a7e1b3f5a8c"
SCOPED_KEY = "fuzz-scoped-key-8b1e3d5f7a9c2e4b"  # may call another model only
KEYS_TEXT = f"ops:{GOOD_KEY}\nscoped:{SCOPED_KEY}:upsell"
REQUESTS = 2000
DB = 9

PATHS = st.sampled_from(
    [
        *["/v1/models/churn/predict"] * 6,
        "/v1/models/other/predict",
        "/v1/models//predict",
        "/v1/models/%ff%fe/predict",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/models/churn",
        "/" + "a" * 10_000,
    ]
)
AUTH = st.sampled_from(
    [
        {},
        *[{"X-API-Key": GOOD_KEY}] * 3,
        *[{"Authorization": f"Bearer {GOOD_KEY}"}] * 2,
        {"X-API-Key": SCOPED_KEY},
        {"X-API-Key": "wrong"},
        {"X-API-Key": GOOD_KEY + " "},
        {"X-API-Key": GOOD_KEY[:-1]},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {GOOD_KEY}"},
        {"X-API-Key": ""},
    ]
)
HOSTILE_NUMBERS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 5000, "1" * 30, "-0"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def bodies(draw) -> bytes:
    kind = draw(
        st.sampled_from(["valid"] * 4 + ["hostile_number", "json", "entities", "bytes", "not_utf8", "deep", "empty"])
    )
    if kind == "valid":
        keys = draw(st.lists(st.sampled_from(["C00000001", "C00000002", "nobody"]), min_size=1, max_size=3))
        return json.dumps({"entities": [{"customer_id": k} for k in keys]}).encode()
    if kind == "hostile_number":
        number = draw(HOSTILE_NUMBERS)
        where = draw(
            st.sampled_from(
                [
                    '{"entities":[{"customer_id":%s}]}',
                    '{"entities":[{"customer_id":"C1","x":%s}]}',
                    '{"entities":[{"customer_id":"C1"}],"version":%s}',
                    "%s",
                ]
            )
        )
        return (where % number).encode()
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    if kind == "entities":
        return json.dumps(
            {"entities": draw(st.lists(st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=3)))}
        ).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "not_utf8":
        return (
            b'{"entities":[{"customer_id":"C'
            + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]))
            + b'"}]}'
        )
    if kind == "deep":
        depth = draw(st.integers(min_value=50, max_value=5000))
        return b'{"entities":' + b"[" * depth + b"]" * depth + b"}"
    return b""


@pytest.fixture(scope="module")
def fuzz_client(trained_churn, redis_url):
    config = ServingConfig(
        models=("churn",), usecase="churn", redis_url=f"{redis_url.rsplit('/', 1)[0]}/{DB}", log_predictions=False
    )
    app = create_app(config, work=trained_churn.work, keys=ApiKeys.parse(KEYS_TEXT))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_two_thousand_hostile_requests_get_no_5xx_and_no_unauthenticated_prediction(fuzz_client, caplog):
    seen = {"requests": 0, "statuses": {}, "predictions": 0}

    @seed(20)
    @settings(
        max_examples=REQUESTS,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(
        method=st.sampled_from(["POST"] * 8 + ["GET", "PUT"]),
        path=PATHS,
        auth=AUTH,
        extra=st.dictionaries(
            st.sampled_from(["Content-Type", "Content-Length", "X-Junk", "Accept", "Transfer-Encoding"]),
            st.sampled_from(["application/json", "text/plain", "0", "-1", "99999999999999999999", "x" * 300, ""]),
            max_size=2,
        ),
        body=bodies(),
    )
    def one_request(method, path, auth, extra, body):
        headers = {**extra, **auth}
        headers.pop("Content-Length", None)  # httpx sets the real length; a false one is tested on a real socket
        headers.pop("Transfer-Encoding", None)
        response = fuzz_client.request(method, path, content=body, headers=headers)
        seen["requests"] += 1
        seen["statuses"][response.status_code] = seen["statuses"].get(response.status_code, 0) + 1
        assert response.status_code < 500, (method, path, body[:200], response.text[:300])
        if response.status_code >= 400:
            assert isinstance(response.json()["detail"], str | list)  # every error is JSON with a detail
        if response.status_code == 200 and path.endswith("/predict"):
            seen["predictions"] += 1
            assert auth in ({"X-API-Key": GOOD_KEY}, {"Authorization": f"Bearer {GOOD_KEY}"}), (auth, body[:200])

    with caplog.at_level(logging.INFO):
        one_request()
    assert seen["requests"] >= REQUESTS
    assert seen["predictions"] > 30, seen  # the fuzz reached the model, not only the error paths
    assert {400, 401, 404, 422} <= set(seen["statuses"]), seen
    assert fuzz_client.get("/healthz").json() == {"status": "ok"}
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, tracebacks[0].getMessage()[:500]


def _raw(port: int, request: bytes) -> bytes:
    """Send ``request`` (which asks for Connection: close) and read the answer until the server closes.

    No half-close: uvicorn reads EOF as the client leaving and drops the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused early: the answer is there
            sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_real_server_refuses_huge_and_numerous_headers_and_lying_lengths(trained_churn, redis_url, caplog):
    import uvicorn

    config = ServingConfig(
        models=("churn",), usecase="churn", redis_url=f"{redis_url.rsplit('/', 1)[0]}/{DB}", log_predictions=False
    )
    app = create_app(config, work=trained_churn.work, keys=ApiKeys.parse(KEYS_TEXT))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    with caplog.at_level(logging.INFO):
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            close = b"Connection: close\r\n"
            big = _raw(
                port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + close + b"X-Big: " + b"a" * (4 << 20) + b"\r\n\r\n"
            )
            assert big.startswith(b"HTTP/1.1 431"), big[:200]
            many = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
            assert _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + close + many + b"\r\n").startswith(
                b"HTTP/1.1 431"
            )
            lying = (
                b"POST /v1/models/churn/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n" % GOOD_KEY.encode() + close
            )
            huge = _raw(port, lying + b"Content-Length: 99999999999\r\n\r\n{}")
            assert huge.startswith(b"HTTP/1.1 413"), huge[:200]
            nan = b'{"entities":[{"customer_id":NaN}]}'
            answer = _raw(port, lying + b"Content-Length: %d\r\n\r\n" % len(nan) + nan)
            assert answer.startswith(b"HTTP/1.1 422"), answer[:300]
            assert b'"input": "nan"' in answer
            ok = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + close + b"\r\n")
            assert ok.startswith(b"HTTP/1.1 200"), ok[:200]
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
