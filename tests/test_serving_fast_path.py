"""The plain-ASGI prediction path: its bounded queue answers 503 + Retry-After, and it hands errors to the app.

Pure unit tests: the ASGI middleware around a recording inner app and a small
service whose predictions wait until the test lets them finish.
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
