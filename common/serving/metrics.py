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
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Fine buckets around the targets (p99 2.5 ms for one entity, 10 ms for 100), coarse beyond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5)
REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
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

    def observe(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        """Record one answered request."""
        self.requests.labels(endpoint, model, str(status)).inc()
        self.latency.labels(endpoint, model).observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint, model, REASONS.get(status, str(status))).inc()

    def model_loaded(self, loaded: Any) -> None:
        """Listener of :class:`common.serving.holder.ModelHolder`: a new alias version is live."""
        self.model_version.labels(loaded.name, loaded.alias or "").set(loaded.version)
        self.model_loads.labels(loaded.name).inc()

    def render(self) -> bytes:
        """The exposition text (all workers' values in multiprocess mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            shared = CollectorRegistry()
            multiprocess.MultiProcessCollector(shared)
            return generate_latest(shared)
        return generate_latest(self.registry)
