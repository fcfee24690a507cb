"""What one worker of the prediction service holds, and its lifetime.

:func:`build_context` makes the worker's objects once (Redis connection pool, model holder,
metrics, prediction log, :class:`common.serving.predict_service.PredictService`);
:func:`lifespan` starts them before the first request and stops them after the last. The app
keeps the context in ``app.state.serving``; route handlers read it from there (an attribute
lookup, no dependency injection), and the fast path gets the service when it is built.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from common.models.online_features import online_groups
from common.online.base import get_online_store
from common.runtime.redis_server import cluster_mode
from common.serving.auth import ApiKeys
from common.serving.config import ServingConfig, open_redis, resolve_redis_url
from common.serving.holder import ModelHolder
from common.serving.metrics import ServingMetrics
from common.serving.predict_service import PredictService
from common.serving.prediction_log import PredictionLogger
from common.serving.prediction_sink import DeltaPredictionSink, PredictionSink
from common.serving.prediction_spool import SPOOL_FOLDER
from common.serving.redis_reads import DirectReads, PendingCluster
from common.settings import Paths, paths

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ServingContext:
    """One worker's objects: built once per app, shared by the routes, the fast path and the lifespan."""

    config: ServingConfig
    work: Paths
    keys: ApiKeys
    metrics: ServingMetrics
    redis_url: str
    redis_client: Any  # this worker's connection pool
    holder: ModelHolder
    prediction_log: PredictionLogger | None
    service: PredictService


def build_context(
    config: ServingConfig,
    *,
    work: Paths | None = None,
    keys: ApiKeys | None = None,
    clock: Clock | None = None,
    prediction_sink: PredictionSink | None = None,
) -> ServingContext:
    """The worker's objects for ``config`` (the arguments are those of :func:`common.serving.app.create_app`)."""
    work = work or paths()
    keys = keys or ApiKeys.from_env()
    metrics = ServingMetrics()
    redis_url = resolve_redis_url(config, work.home)
    cluster = cluster_mode()
    if cluster:  # made on first use: a worker starts, not ready, while the cluster is away (PendingCluster)
        redis_client = PendingCluster(lambda: open_redis(redis_url, config.redis_timeout_s))
    else:
        redis_client = open_redis(redis_url, config.redis_timeout_s)

    # a Redis Cluster client routes each key to its master (mget_nonatomic): the direct MGET is for one server
    reads = redis_client if cluster else DirectReads(redis_client)

    def store_for(spec: Any) -> Any:
        # One Redis connection pool for every model version; each store only knows its model's groups.
        return get_online_store(
            "redis",
            client=reads,
            cluster=cluster,
            usecase=spec.usecase,
            version=spec.usecase_version,
            groups=online_groups(spec),
        )

    holder = ModelHolder(config, work, store_for, listeners=[metrics.model_loaded])
    prediction_log = prediction_logger(config, work, metrics, prediction_sink)
    service = PredictService(config, keys, holder, metrics, prediction_log, clock or utc_now)
    return ServingContext(config, work, keys, metrics, redis_url, redis_client, holder, prediction_log, service)


def prediction_logger(
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
    logger = PredictionLogger(
        sink or DeltaPredictionSink(table),
        spool_dir=f"{table}/{SPOOL_FOLDER}",
        flush_interval_s=config.log_flush_s,
        metrics=metrics.prediction_log,
    )
    metrics.on_flush(logger.publish_queued)  # the queued rows reach Prometheus with the other per-request figures
    return logger


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the models and start the background work before the first request; stop it after the last."""
    from common.runtime.redis_server import describe

    context: ServingContext = app.state.serving
    config, holder, prediction_log = context.config, context.holder, context.prediction_log
    log.info(
        "serving %s @%s from %s; online store %s; %d API client(s); max batch %d",
        ",".join(config.models),
        config.alias,
        context.work.home,
        describe(context.redis_url),
        len(context.keys.clients),
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
        context.metrics.flush()  # the last requests' figures (a worker's values outlive it in multiprocess mode)
        context.redis_client.close()
