"""The prediction endpoint as plain ASGI, in front of FastAPI, with a bounded queue.

``POST /v1/models/{model}/predict`` is answered here without FastAPI's routing,
dependency injection and response classes (together they cost more than the
lookup and the model at one entity): headers -> API key -> body -> the
:class:`common.serving.predict_service.PredictService` -> bytes out.

Every error goes on to FastAPI: the exception raised here travels in the ASGI
scope (``FAST_PATH_ERROR``), the FastAPI route raises it again, and the app's
exception handlers render it, so error answers keep one renderer. The one
exception is the overload 503 below, a fixed body sent at once: shedding load
must cost next to nothing. Every other path goes to FastAPI directly.

Back pressure: each worker admits at most ``max_queue`` predictions at once
(waiting or running). An admitted request first yields to the event loop once,
so every request the loop has already read is counted before any is scored;
beyond the bound, the answer is an immediate 503 with ``Retry-After``, and
requests never pile up without limit.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any

from common.serving.limits import RequestLimits, answer_json
from common.serving.metrics import ServingMetrics
from common.serving.predict_service import PredictService

FAST_PATH_ERROR = "loom.fast_path_error"
_PREFIX = "/v1/models/"
_SUFFIX = "/predict"


def predict_model(scope: dict[str, Any]) -> str | None:
    """The model named by a prediction request's path (None for other requests)."""
    path = scope["path"]
    if scope["method"] != "POST" or not path.startswith(_PREFIX) or not path.endswith(_SUFFIX):
        return None
    model = path[len(_PREFIX) : -len(_SUFFIX)]
    return model if model and "/" not in model else None


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The API key of ``X-API-Key`` or ``Authorization: Bearer`` (as FastAPI's security schemes read them)."""
    bearer = None
    for name, value in headers:
        if name == b"x-api-key" and value:
            return value.decode("latin-1")
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials:
                bearer = credentials
    return bearer


class FastPredictPath:
    """ASGI middleware: serves predictions itself, hands everything else (and every error) to ``app``.

    ``limits`` (:class:`common.serving.limits.RequestLimits`): checked first, as in front of every
    other request. ``metrics``: every prediction request is counted and timed here, under the model's
    name when it is served (``served``), else ``other`` (the app's metrics middleware does the same
    for the other requests). Both inline rather than as middleware layers: each layer is a call and
    a ``send`` wrapper per request.
    """

    def __init__(
        self,
        app: Any,
        service: PredictService,
        max_queue: int,
        *,
        limits: RequestLimits | None = None,
        metrics: ServingMetrics | None = None,
        served: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.service = service
        self.max_queue = max_queue
        self.limits = limits
        self.metrics = metrics
        self.served = frozenset(served)
        self.admitted = 0  # predictions of this worker waiting or running

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (model := predict_model(scope)) is None:
            await self.app(scope, receive, send)
            return
        if self.limits is not None and (refusal := self.limits.check(scope)) is not None:
            await answer_json(send, *refusal)  # refused before anything runs (not counted, as for other requests)
            return
        started = perf_counter()
        status = 500
        try:
            if self.admitted >= self.max_queue:
                status = 503
                await self._overloaded(send)
                return
            self.admitted += 1
            try:
                await asyncio.sleep(0)  # let the loop start every request it has read: they count in `admitted`
                status = await self._predict(model, scope, receive, send)
            finally:
                self.admitted -= 1
        finally:
            if self.metrics is not None:
                self.metrics.observe(
                    "predict", model if model in self.served else "other", status, perf_counter() - started
                )

    async def _predict(self, model: str, scope: dict[str, Any], receive: Any, send: Any) -> int:
        """Answer the prediction; the status sent."""
        service = self.service
        body = b""
        try:
            client = service.authenticate(presented_key(scope["headers"]))
            service.check_access(model, client)
            body = await self._body(scope, receive)
            if body is None:
                return 499  # the client went away (nginx's code; nothing is sent)
            answer = await service.predict(model, client, body)
        except Exception as err:  # rendered by the app's exception handlers (see the module docstring)
            scope[FAST_PATH_ERROR] = err
            return await _status_of(self.app, scope, _replay(body), send)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(answer.body)),
                    (b"x-request-id", answer.request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})
        return 200

    async def _body(self, scope: dict[str, Any], receive: Any) -> bytes | None:
        """The request body, refused with 413 beyond the limit (before reading it when it says its length)."""
        limit = self.service.body_limit
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise self.service.too_large(int(value))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise self.service.too_large(None)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _overloaded(self, send: Any) -> None:
        """503 + Retry-After at once: no work, no body read."""
        detail = (
            f'{{"detail":"this worker already holds {self.max_queue} predictions (LOOM_SERVE_MAX_QUEUE); retry later"}}'
        ).encode()
        retry = str(self.service.config.retry_after_s).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(detail)).encode()),
            (b"retry-after", retry),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": detail})


class RecordedSend:
    """An ASGI ``send`` that passes every message on and keeps the status of the response it started
    (:attr:`status`: 500 until a response starts): what the metrics count a request under."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.status = 500

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


async def _status_of(app: Any, scope: dict[str, Any], receive: Any, send: Any) -> int:
    """Run ``app`` on the request; the status it sent (500 if none)."""
    recorded = RecordedSend(send)
    await app(scope, receive, recorded)
    return recorded.status


def _replay(body: bytes) -> Any:
    """A ``receive`` that gives the already read body again (then waits like a finished request)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # nothing more will come: like uvicorn after the body
        return {"type": "http.disconnect"}

    return receive
