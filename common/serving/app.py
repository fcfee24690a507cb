"""The FastAPI application of the prediction service.

``create_app(config, ...)`` builds it (tests call it directly, with a fixed
clock); ``app_from_env()`` is the factory uvicorn workers call
(``uvicorn common.serving.app:app_from_env --factory``), configured by the
environment (:mod:`common.serving.config`).

Endpoints:

* ``POST /v1/models/{model}/predict`` (API key): scores, see :mod:`common.serving.schemas`;
* ``GET /metrics`` (API key): Prometheus;
* ``GET /healthz``: the process answers; ``GET /readyz``: every served model is
  loaded and Redis answers a PING (503 otherwise);
* ``GET /openapi.json`` and ``GET /docs``.

The prediction is answered in order: 401 (no or wrong key), 403 (the key may
not call this model), 404 (model not served / version not registered), 413
(body or batch too large), 422 (bad JSON, wrong types, unknown fields: ``loc``
names the field), 503 + ``Retry-After`` (Redis unreachable, or no version
loaded yet), else 200. The body is read only after the key is checked, so an
unauthenticated caller cannot make the server parse anything.

Predictions take the fast path (:mod:`common.serving.fast_path`): plain ASGI in
front of FastAPI, orjson in and out, numpy from the Redis reply to the model
(:mod:`common.serving.predict`), a bounded queue per worker (503 + Retry-After
beyond ``LOOM_SERVE_MAX_QUEUE``). Its errors are rendered by the FastAPI route
and the exception handlers below, the one place errors are rendered. The work
is inline on the event loop: one MGET (sub-millisecond) and a small predict
cost less than a hop to the thread pool; the Redis timeout
(``LOOM_SERVE_REDIS_TIMEOUT_S``) bounds how long an outage can hold the loop.
Scale out with workers (processes, ``loom serve --workers``), not threads.

Every 200 answer is also queued, one row per entity, for the prediction log
(:mod:`common.serving.prediction_log`): a background thread appends it to the
use case's ``predictions/rest`` Delta table, which the evaluation reads next to
the batch and stream tables; shutdown writes what is still queued. The answer
carries the row's ``request_id`` in the ``X-Request-Id`` header.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from common.models.online_features import online_groups
from common.online.base import get_online_store
from common.serving.auth import ApiKeys, Client
from common.serving.config import ServingConfig, open_redis, resolve_redis_url
from common.serving.errors import install_error_handlers
from common.serving.fast_path import FAST_PATH_ERROR, FastPredictPath
from common.serving.holder import ModelHolder
from common.serving.limits import install_limits
from common.serving.metrics import CONTENT_TYPE, ServingMetrics
from common.serving.predict_service import PredictService
from common.serving.prediction_log import PredictionLogger
from common.serving.prediction_sink import DeltaPredictionSink, PredictionSink
from common.serving.prediction_spool import SPOOL_FOLDER
from common.serving.schemas import ErrorBody, PredictRequest, PredictResponse
from common.settings import Paths, paths

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key of LOOM_API_KEYS")
_bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token")
_ERRORS = {
    401: {"model": ErrorBody, "description": "No API key, or an unknown one"},
    403: {"model": ErrorBody, "description": "The API key may not call this model"},
    404: {"model": ErrorBody, "description": "The model is not served, or has no such version"},
    413: {"model": ErrorBody, "description": "More entities (or bytes) than the server accepts"},
    503: {
        "model": ErrorBody,
        "description": "The online store is unreachable or no version is loaded; see Retry-After",
    },
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI: cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: Any, metrics: ServingMetrics, served: tuple[str, ...]) -> None:
        self.app = app
        self.metrics = metrics
        self.served = set(served)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            endpoint, model = self._classify(scope["path"])
            self.metrics.observe(endpoint, model, status, time.perf_counter() - started)

    def _classify(self, path: str) -> tuple[str, str]:
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["v1", "models"] and parts[3] == "predict":
            return "predict", parts[2] if parts[2] in self.served else "other"
        if path in ("/metrics", "/healthz", "/readyz"):
            return path[1:], ""
        return "other", ""


async def _read_body(request: Request, service: PredictService) -> bytes:
    """The request body, refused with 413 beyond the service's limit (before reading it when it says its length)."""
    limit = service.body_limit
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise service.too_large(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise service.too_large(None)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    config: ServingConfig,
    *,
    work: Paths | None = None,
    keys: ApiKeys | None = None,
    clock: Clock | None = None,
    prediction_sink: PredictionSink | None = None,
) -> FastAPI:
    """The service for ``config``. ``clock`` (tests only) fixes the lookup time; default: now (UTC).

    ``prediction_sink`` (tests only) replaces the Delta table of the prediction log; the spool
    stays next to that table.
    """
    work = work or paths()
    keys = keys or ApiKeys.from_env()
    clock = clock or _utc_now
    metrics = ServingMetrics()
    redis_url = resolve_redis_url(config, work.home)
    redis_client = open_redis(redis_url, config.redis_timeout_s)  # this worker's connection pool

    def store_for(spec: Any) -> Any:
        # One Redis connection pool for every model version; each store only knows its model's groups.
        return get_online_store(
            "redis",
            client=redis_client,
            usecase=spec.usecase,
            version=spec.usecase_version,
            groups=online_groups(spec),
        )

    holder = ModelHolder(config, work, store_for, listeners=[metrics.model_loaded])
    prediction_log = _prediction_logger(config, work, metrics, prediction_sink)
    service = PredictService(config, keys, holder, metrics, prediction_log, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from common.runtime.redis_server import describe

        log.info(
            "serving %s @%s from %s; online store %s; %d API client(s); max batch %d",
            ",".join(config.models),
            config.alias,
            work.home,
            describe(redis_url),
            len(keys.clients),
            config.max_batch,
        )
        await run_in_threadpool(holder.refresh)  # first load before the first request: /readyz is true at once
        holder.start()
        if app.state.freeze_gc:
            # a worker's models and modules live as long as the process: keep them out of the
            # collector's full passes, which would otherwise stall requests for milliseconds
            gc.freeze()
        if prediction_log is not None:
            prediction_log.start()
        try:
            yield
        finally:
            holder.stop()
            if prediction_log is not None:
                # uvicorn has answered every request by now: all their predictions are queued
                await run_in_threadpool(prediction_log.close)
            redis_client.close()

    app = FastAPI(
        title="Loom prediction service",
        version="1",
        description="Scores entities with the registered model's pyfunc over the online feature store.",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.config = config
    app.state.prediction_log = prediction_log
    app.state.freeze_gc = False  # app_from_env (a server worker) turns it on; tests build many apps
    app.add_middleware(FastPredictPath, service=service, max_queue=config.max_queue)
    app.add_middleware(_MetricsMiddleware, metrics=metrics, served=config.models)  # counts everything it passes
    install_error_handlers(app)  # hostile input: never a 500 from rendering an error
    # outermost: header size/count, URL length and declared body size, refused before anything runs
    install_limits(app, service.body_limit)

    def authenticate(
        api_key: str | None = Security(_api_key),
        bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    ) -> Client:
        return service.authenticate(api_key or (bearer.credentials if bearer is not None else None))

    @app.post(
        "/v1/models/{model}/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        summary="Score entities",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
    )
    async def predict(model: str, request: Request, client: Client = Depends(authenticate)) -> Response:
        """Score entities with the model's version of the served alias (or the version named in the body)."""
        failed = request.scope.get(FAST_PATH_ERROR)
        if failed is not None:  # the fast path answers every 200; its errors are raised (and rendered) here
            raise failed
        service.check_access(model, client)
        body = await _read_body(request, service)
        answer = await service.predict(model, client, body)
        return Response(answer.body, media_type="application/json", headers={"X-Request-Id": answer.request_id})

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Every served model is loaded and Redis answers", responses={503: {}})
    async def readyz() -> JSONResponse:
        models = holder.status()
        try:
            redis_ok = bool(await run_in_threadpool(redis_client.ping))
        except Exception:  # any failure of the PING means not ready; the reason is in the Redis log
            redis_ok = False
        ready = redis_ok and all(v is not None for v in models.values())
        return JSONResponse({"ready": ready, "redis": redis_ok, "models": models}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={401: {"model": ErrorBody}})
    async def prometheus(client: Client = Depends(authenticate)) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _prediction_logger(
    config: ServingConfig, work: Paths, metrics: ServingMetrics, sink: PredictionSink | None
) -> PredictionLogger | None:
    """The prediction log of ``config`` (None when off, or when no use case names its table)."""
    if not config.log_predictions:
        log.info("predictions are not logged (LOOM_SERVE_LOG_PREDICTIONS=0)")
        return None
    if not config.usecase:
        log.warning("predictions are not logged: no use case names the table. Fix: set LOOM_SERVE_USECASE")
        return None
    from common.lake.paths import predictions_path

    table = predictions_path(work, config.usecase, "rest")
    log.info("predictions are logged to %s (written every %.1fs at most)", table, config.log_flush_s)
    return PredictionLogger(
        sink or DeltaPredictionSink(table),
        spool_dir=f"{table}/{SPOOL_FOLDER}",
        flush_interval_s=config.log_flush_s,
        metrics=metrics.prediction_log,
    )


SUPERVISOR_PID_ENV = "LOOM_SERVE_SUPERVISOR_PID"
"""Set by ``loom serve`` to its own pid: a worker process that reads another pid arms its parent-death signal."""


def app_from_env() -> FastAPI:
    """The uvicorn factory: config, keys and Redis from the environment (see :mod:`common.serving.config`)."""
    from common.runtime.log import setup_logging
    from common.runtime.processes import die_with_parent

    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if supervisor and int(supervisor) != os.getpid():
        # a worker of `loom serve --workers N`: it must not outlive the supervisor, even a SIGKILLed one
        die_with_parent(int(supervisor))
    setup_logging()
    config = ServingConfig.from_env()
    if config.threads > 0:
        limit_threads(config.threads)
    app = create_app(config)
    app.state.freeze_gc = True
    return app


def limit_threads(threads: int) -> None:
    """Cap OpenMP/BLAS threads of this process for good (a serving worker's, not a test run's).

    One request is a few rows: extra threads only add wake-up latency (on a busy
    machine, stalls of many milliseconds), and the workers already share the
    cores. The variables cover runtimes loaded later (the estimator's OpenMP
    comes with the model); threadpoolctl covers those already loaded (numpy's BLAS).
    """
    import os

    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    import sklearn.ensemble  # noqa: F401  - loads scikit-learn's OpenMP runtime now, so the cap below reaches it
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
