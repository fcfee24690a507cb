"""The FastAPI application of the prediction service.

``create_app(config, ...)`` builds it (tests call it directly, with a fixed clock) from the
worker's objects (:mod:`common.serving.context`), the routes (:mod:`common.serving.routes`) and
the middleware; ``app_from_env()`` is the factory uvicorn workers call
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

Predictions take the fast path (:mod:`common.serving.fast_path`): plain ASGI before
FastAPI's middleware stack (:class:`LoomApp`: only the request limits and the metrics
run first), orjson in and out, numpy from the Redis reply to the model
(:mod:`common.serving.predict`), a bounded queue per worker (503 + Retry-After
beyond ``LOOM_SERVE_MAX_QUEUE``). Its errors are rendered by the FastAPI route
and the app's exception handlers (:mod:`common.serving.errors`), the one place errors are rendered. The work
is inline on the event loop, micro-batched (:mod:`common.serving.batcher`): the
requests the loop holds at once share one MGET (sub-millisecond) and one model call,
which cost less than a hop to the thread pool; the Redis timeout
(``LOOM_SERVE_REDIS_TIMEOUT_S``) bounds how long an outage can hold the loop.
Scale out with workers (processes, ``loom serve --workers``), not threads.

Every 200 answer is also queued, one row per entity, for the prediction log
(:mod:`common.serving.prediction_log`): a background thread appends it to the
use case's ``predictions/rest`` Delta table, which the evaluation reads next to
the batch and stream tables; shutdown writes what is still queued. The answer
carries the row's ``request_id`` in the ``X-Request-Id`` header.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from fastapi import FastAPI

from common.serving.auth import ApiKeys
from common.serving.config import ServingConfig
from common.serving.context import Clock, build_context, lifespan
from common.serving.errors import install_error_handlers
from common.serving.fast_path import FAST_PATH_ERROR, FastPredictPath, RecordedSend, predict_model
from common.serving.limits import RequestLimits, install_limits
from common.serving.metrics import ServingMetrics
from common.serving.prediction_sink import PredictionSink
from common.serving.routes import install_routes
from common.settings import Paths


class _MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI: cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: Any, metrics: ServingMetrics, served: tuple[str, ...]) -> None:
        self.app = app
        self.metrics = metrics
        self.served = set(served)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or FAST_PATH_ERROR in scope:  # a fast path error: counted where it began
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        recorded = RecordedSend(send)
        try:
            await self.app(scope, receive, recorded)
        finally:
            endpoint, model = self._classify(scope["path"])
            self.metrics.observe(endpoint, model, recorded.status, time.perf_counter() - started)

    def _classify(self, path: str) -> tuple[str, str]:
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["v1", "models"] and parts[3] == "predict":
            return "predict", parts[2] if parts[2] in self.served else "other"
        if path in ("/metrics", "/healthz", "/readyz"):
            return path[1:], ""
        return "other", ""


class LoomApp(FastAPI):
    """FastAPI, with prediction requests sent past its middleware stack to the fast path.

    FastAPI's own layers (error, telemetry and body limit middleware, the exception
    middleware) cost more per request than the work a prediction of one entity
    leaves after micro-batching; a prediction request runs through the same checks
    and counters as every other request (:class:`common.serving.limits.RequestLimits`,
    the metrics) and then the fast path, which hands its errors to the whole stack
    (:attr:`predict_path` is None: everything goes through FastAPI).
    """

    predict_path: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.predict_path is not None and scope["type"] == "http" and predict_model(scope) is not None:
            await self.predict_path(scope, receive, send)  # checks the limits and counts the request itself
        else:
            await super().__call__(scope, receive, send)


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
    context = build_context(config, work=work, keys=keys, clock=clock, prediction_sink=prediction_sink)
    app = LoomApp(
        title="Loom prediction service",
        version="1",
        description="Scores entities with the registered model's pyfunc over the online feature store.",
        lifespan=lifespan,
    )
    app.state.serving = context
    # the parts tests and tools look at by name
    app.state.holder = context.holder
    app.state.metrics = context.metrics
    app.state.config = config
    app.state.prediction_log = context.prediction_log
    app.state.freeze_gc = False  # app_from_env (a server worker) turns it on; tests build many apps
    app.add_middleware(_MetricsMiddleware, metrics=context.metrics, served=config.models)  # counts everything
    install_error_handlers(app)  # hostile input: never a 500 from rendering an error
    # outermost: header size/count, URL length and declared body size, refused before anything runs
    install_limits(app, context.service.body_limit)
    install_routes(app)

    async def whole_stack(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await FastAPI.__call__(app, scope, receive, send)

    # predictions: the same limits and metrics (inline), then the fast path; its errors go through the whole stack
    app.predict_path = FastPredictPath(
        whole_stack,
        service=context.service,
        max_queue=config.max_queue,
        limits=RequestLimits(None, body_limit=context.service.body_limit),
        metrics=context.metrics,
        served=config.models,
    )
    return app


SUPERVISOR_PID_ENV = "LOOM_SERVE_SUPERVISOR_PID"
"""Set by ``loom serve`` to its own pid: a worker process that reads another pid arms its parent-death signal."""


SWITCH_INTERVAL_S = 0.0005


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
    # The prediction log's writer thread shares the GIL with the event loop. A thread that wants
    # the GIL asks its holder to let go only after the switch interval (5 ms by default): each
    # write of the log could then stall requests by 5 ms. 0.5 ms bounds that stall; the cost is
    # more switches, and only while both threads run.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
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
