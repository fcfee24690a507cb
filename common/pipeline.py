"""The streaming pipeline of a use case: landing -> bronze -> features -> Redis + Delta,
and bronze -> triggers -> scores -> predictions (Delta) + Redis.

Ingestion and features are separate Structured Streaming queries chained by
the bronze Delta tables (the medallion pattern): each has its own checkpoint,
so either can be stopped, restarted or replayed without the other. When the
triggers run too, a trigger query writes the features of the groups its
operator already folds (same source and entity), and those groups get no
feature query of their own.

A feature or trigger query that fails while a Redis node of the online store does not answer stops the job
with one StoreError naming the node (common.online.redis_health), not Spark's stack traces.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable

from pyspark.errors import StreamingQueryException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from common.compile.plan import Plan
from common.errors import ConfigError
from common.features.online_sink import spark_online_writer
from common.features.streaming import OnlineWriter, start_feature_streams
from common.ingest.report import IngestReport
from common.ingest.stream import ingest_source, raise_failure, run_until_stopped, start_ingest_stream, stop_gracefully
from common.online.redis_health import store_outage
from common.privacy import require_keys
from common.settings import Paths
from common.triggers.scoring import ModelResolver
from common.triggers.stream import features_in_trigger_queries, start_trigger_streams

log = logging.getLogger("loom.pipeline")

PARTS = ("ingest", "features", "triggers")


def _check_parts(parts: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(parts)
    unknown = sorted(chosen - set(PARTS))
    if unknown or not chosen:
        raise ConfigError(f"unknown stream part(s) {unknown or '(none given)'}. Fix: use some of {list(PARTS)}")
    return chosen


def _feature_queries(plan: Plan, parts: frozenset[str], redis_url: str) -> tuple[list[str], OnlineWriter | None]:
    """The groups that get a feature query of their own, and the writer the trigger queries write the others
    with (None: they write none). With features and triggers both running, the groups whose tiles a trigger
    query carries are written by it: their events are folded once (common/triggers/shared_state.py)."""
    if "features" not in parts:
        return [], None
    carried = features_in_trigger_queries(plan) if "triggers" in parts else []
    own = [name for name in plan.groups if name not in carried]
    return own, spark_online_writer(redis_url) if carried else None


def _warm_models(
    spark: SparkSession, plan: Plan, work: Paths, parts: frozenset[str], refresh_s: float
) -> tuple[ModelResolver, threading.Thread]:
    """The trigger queries' model resolver, warmed in a thread while ingestion and features start (a thread
    that does nothing when the triggers do not run or the plan has none)."""
    resolver = ModelResolver(work, refresh_s)
    triggers = list(plan.triggers.values()) if "triggers" in parts else []
    if not triggers:
        thread = threading.Thread(target=lambda: None)
        thread.start()
        return resolver, thread
    return resolver, resolver.warm_in_background(spark, triggers)


def catch_up(
    spark: SparkSession,
    plan: Plan,
    work: Paths,
    redis_url: str,
    *,
    max_files_per_trigger: int | None = None,
    model_refresh_s: float = 0.0,
    parts: Iterable[str] = PARTS,
) -> list[IngestReport]:
    """Process everything that has landed, in micro-batches, then stop (availableNow).

    ``parts`` picks the queries: ingest, features, triggers (e.g. no triggers before any model is trained).
    """
    parts = _check_parts(parts)
    require_keys(plan.spec.sources)
    resolver, warming = _warm_models(spark, plan, work, parts, model_refresh_s)
    reports = [
        ingest_source(spark, plan.spec, name, work, "batch", max_files_per_trigger=max_files_per_trigger)
        for name in plan.spec.sources
        if "ingest" in parts
    ]
    queries = []
    own, write_features = _feature_queries(plan, parts, redis_url)
    if own:
        queries += start_feature_streams(
            spark,
            work,
            plan,
            spark_online_writer(redis_url),
            available_now=True,
            groups=own,
            max_files_per_trigger=max_files_per_trigger,
        )
    if "triggers" in parts:
        warming.join()
        queries += start_trigger_streams(
            spark,
            work,
            plan,
            redis_url,
            available_now=True,
            max_files_per_trigger=max_files_per_trigger,
            model_refresh_s=model_refresh_s,
            resolver=resolver,
            write_features=write_features,
        )
    for query in queries:
        with contextlib.suppress(StreamingQueryException):
            query.awaitTermination()  # a failure is raised below, as a store outage when it is one
        if query.exception() is not None:
            break
    raise_query_failure(queries, redis_url, plan.usecase)
    return reports


def run_continuously(
    spark: SparkSession,
    plan: Plan,
    work: Paths,
    redis_url: str,
    stop: threading.Event,
    *,
    interval: str = "5 seconds",
    max_files_per_trigger: int | None = None,
    model_refresh_s: float = 0.0,
    parts: Iterable[str] = PARTS,
) -> dict[str, IngestReport]:
    """Ingest, feature and trigger queries that run until ``stop`` is set (or one fails)."""
    parts = _check_parts(parts)
    require_keys(plan.spec.sources)
    resolver, warming = _warm_models(spark, plan, work, parts, model_refresh_s)
    reports = {name: IngestReport(name) for name in plan.spec.sources if "ingest" in parts}
    ingest = {
        name: start_ingest_stream(
            spark,
            plan.spec,
            name,
            work,
            mode="stream",
            trigger_interval=interval,
            max_files_per_trigger=max_files_per_trigger,
            report=report,
        )
        for name, report in reports.items()
    }
    queries: list[StreamingQuery] = list(ingest.values())
    own, write_features = _feature_queries(plan, parts, redis_url)
    if own:
        queries += start_feature_streams(
            spark, work, plan, spark_online_writer(redis_url), interval=interval, groups=own
        )
    if "triggers" in parts:
        warming.join()
        queries += start_trigger_streams(
            spark,
            work,
            plan,
            redis_url,
            interval=interval,
            model_refresh_s=model_refresh_s,
            resolver=resolver,
            write_features=write_features,
        )
    log.info("streaming %d queries every %s; stop with Ctrl-C or SIGTERM", len(queries), interval)
    run_until_stopped(queries, stop)
    for name, query in ingest.items():
        raise_failure(query, reports[name], plan.spec)
    raise_query_failure(queries, redis_url, plan.usecase)
    return reports


def raise_query_failure(queries: list[StreamingQuery], redis_url: str, usecase: str) -> None:
    """Raise why the first failed query of ``queries`` failed, after stopping the others (between their
    micro-batches): a :class:`StoreError` when a node of the online store at ``redis_url`` does not answer
    (common.online.redis_health), else Spark's exception."""
    failed = next((query for query in queries if query.exception() is not None), None)
    if failed is None:
        return
    for query in queries:
        if query.isActive:
            stop_gracefully(query)
    error = failed.exception()
    outage = store_outage(redis_url, failed.name, usecase)
    if outage is not None:
        raise outage from error
    raise error
