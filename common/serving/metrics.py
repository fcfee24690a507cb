"""Prometheus metrics of the prediction service.

Each app has its own registry (tests build several apps in one process). With
several uvicorn workers, set ``PROMETHEUS_MULTIPROC_DIR`` (``loom serve`` does):
values are then kept in shared files and ``/metrics`` of any worker shows the
sum over all of them (the model version gauge shows the highest live value).

Metrics:

* ``loom_serving_requests_total{endpoint, model, status}``
* ``loom_serving_request_seconds{endpoint, model}``: latency histogram, whole request
* ``loom_serving_errors_total{endpoint, model, reason}``: every answer >= 400
* ``loom_serving_entities_total{model}``, ``loom_serving_missing_features_total{model}``
* ``loom_serving_model_version{model, alias}`` and ``loom_serving_model_loads_total{model}``
* the prediction log (:mod:`common.serving.prediction_log`), in rows:
  ``loom_serving_predictions_logged_total`` (queued by requests),
  ``loom_serving_predictions_written_total`` (in the Delta table),
  ``loom_serving_predictions_spooled_total``, ``loom_serving_predictions_recovered_total`` (spool
  files appended at a start), ``loom_serving_predictions_lost_total`` (should stay 0),
  ``loom_serving_prediction_log_pending`` (queued or awaiting a retry) and
  ``loom_serving_prediction_log_errors_total`` (failed writes)

The per-request figures (requests, latency, errors, entities, missing features, rows
queued for the log) are tallied in plain Python and published to Prometheus in batches:
at most :data:`FLUSH_S` after the first request of a batch, at every ``/metrics`` of the
worker, and at shutdown. With several workers every update of a Prometheus value is a
locked write to a memory-mapped file (and a ``getpid``), several per request: about a
tenth of a worker's CPU at one entity per request. So a scrape sees another worker's
requests up to :data:`FLUSH_S` late, far below any scrape interval.
"""

from __future__ import annotations

import asyncio
import os
import threading
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
FLUSH_S = 1.0  # how long a request's figures may wait before they reach Prometheus (see the module docstring)
# Fine buckets around the targets (p99 2.5 ms for one entity, 10 ms for 100), coarse beyond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5)
REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    499: "client_closed",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


class PredictionLogMetrics:
    """Counters of the prediction log, in rows (the names :class:`common.serving.prediction_log.PredictionLogger` uses)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.queued = Counter("loom_serving_predictions_logged", "Prediction rows queued for the log", registry=r)
        self.written = Counter("loom_serving_predictions_written", "Prediction rows written to the log", registry=r)
        self.spooled = Counter(
            "loom_serving_predictions_spooled", "Prediction rows saved to the spool: the log failed", registry=r
        )
        self.recovered = Counter(
            "loom_serving_predictions_recovered", "Spooled prediction rows appended to the log", registry=r
        )
        self.lost = Counter("loom_serving_predictions_lost", "Prediction rows neither written nor spooled", registry=r)
        self.errors = Counter("loom_serving_prediction_log_errors", "Failed writes of the prediction log", registry=r)
        self.pending = Gauge(
            "loom_serving_prediction_log_pending",
            "Prediction rows queued or awaiting a retry",
            multiprocess_mode="livesum",
            registry=r,
        )


class ServingMetrics:
    """The service's metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "loom_serving_requests", "Requests answered", ["endpoint", "model", "status"], registry=r
        )
        self.latency = Histogram(
            "loom_serving_request_seconds",
            "Time from request to response",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("loom_serving_errors", "Answers >= 400", ["endpoint", "model", "reason"], registry=r)
        self.entities = Counter("loom_serving_entities", "Entities scored", ["model"], registry=r)
        self.missing = Counter(
            "loom_serving_missing_features", "Features missing (NaN) at scoring", ["model"], registry=r
        )
        self.model_version = Gauge(
            "loom_serving_model_version",
            "Version currently served for the alias",
            ["model", "alias"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_loads = Counter("loom_serving_model_loads", "Alias versions loaded", ["model"], registry=r)
        self.prediction_log = PredictionLogMetrics(r)
        # the tallies not published yet (see the module docstring); the lock: /metrics may run on another thread
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], list[Any]] = {}  # -> [count, seconds, per-bucket counts]
        self._scored: dict[str, list[int]] = {}  # model -> [entities, missing features]
        self._hooks: list[Callable[[], None]] = []
        self._armed: asyncio.AbstractEventLoop | None = None  # the loop where a flush is due

    def observe(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        """Record one answered request (published with the next flush)."""
        key = (endpoint, model, status)
        with self._lock:
            tally = self._requests.get(key)
            if tally is None:
                tally = self._requests[key] = [0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1)]
            tally[0] += 1
            tally[1] += seconds
            tally[2][bisect_left(LATENCY_BUCKETS, seconds)] += 1  # Prometheus' rule: the first bound >= seconds
        if self._armed is None or self._armed.is_closed():
            self._arm()

    def scored(self, model: str, entities: int, missing: int) -> None:
        """Record the entities of one answer and the features they missed (published with the next flush)."""
        with self._lock:
            tally = self._scored.get(model)
            if tally is None:
                tally = self._scored[model] = [0, 0]
            tally[0] += entities
            tally[1] += missing
        if self._armed is None or self._armed.is_closed():
            self._arm()

    def on_flush(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` at every flush (the prediction log publishes its queued rows so)."""
        self._hooks.append(hook)

    def _arm(self) -> None:
        """Flush :data:`FLUSH_S` from now, on the running event loop (at once without one).

        A flush due on a loop that has closed since (tests run apps on several loops) is due again.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._armed = loop
        loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Publish the tallies to Prometheus."""
        with self._lock:
            self._armed = None
            requests, self._requests = self._requests, {}
            scored, self._scored = self._scored, {}
        for (endpoint, model, status), (count, seconds, buckets) in requests.items():
            self.requests.labels(endpoint, model, str(status)).inc(count)
            if status >= 400:
                self.errors.labels(endpoint, model, REASONS.get(status, str(status))).inc(count)
            # Histogram has no bulk observe: its per-bucket values take the counts (what observe() adds to)
            child = self.latency.labels(endpoint, model)
            child._sum.inc(seconds)
            for index, n in enumerate(buckets):
                if n:
                    child._buckets[index].inc(n)
        for model, (entities, missing) in scored.items():
            if entities:
                self.entities.labels(model).inc(entities)
            if missing:
                self.missing.labels(model).inc(missing)
        for hook in self._hooks:
            hook()

    def model_loaded(self, loaded: Any) -> None:
        """Listener of :class:`common.serving.holder.ModelHolder`: a new alias version is live."""
        self.model_version.labels(loaded.name, loaded.alias or "").set(loaded.version)
        self.model_loads.labels(loaded.name).inc()

    def render(self) -> bytes:
        """The exposition text (all workers' values in multiprocess mode; this worker's tallies flushed first)."""
        self.flush()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            shared = CollectorRegistry()
            multiprocess.MultiProcessCollector(shared)
            return generate_latest(shared)
        return generate_latest(self.registry)
