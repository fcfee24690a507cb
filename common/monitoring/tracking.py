"""MLflow logging of monitoring results on a model version's run, idempotently.

Metric points are logged with an explicit step; a point whose (step, value) the
run already holds is not logged again, so re-running a job adds nothing, while
a bucket whose value changed (more labels arrived) gets a new point at the same
step (MLflow shows the latest).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from common.models import registry
from common.settings import Paths

log = logging.getLogger("loom.monitoring")
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch


@dataclass(frozen=True)
class Point:
    """One metric value at a step (and a time, in ms since the epoch)."""

    key: str
    value: float
    step: int
    timestamp_ms: int


def version_run_id(client: Any, name: str, version: int) -> str | None:
    """The run that produced ``name`` version ``version``; None when the version is not registered."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version)).run_id
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def log_points(client: Any, run_id: str, points: Iterable[Point]) -> int:
    """Log the points the run does not already hold with the same value; returns how many were logged."""
    from mlflow.entities import Metric

    fresh: list[Metric] = []
    seen: dict[str, set[tuple[int, float]]] = {}
    for point in points:
        if point.value is None or math.isnan(point.value):
            continue
        if point.key not in seen:
            seen[point.key] = {(m.step, m.value) for m in client.get_metric_history(run_id, point.key)}
        if (point.step, float(point.value)) in seen[point.key]:
            continue
        seen[point.key].add((point.step, float(point.value)))
        fresh.append(Metric(point.key, float(point.value), point.timestamp_ms, point.step))
    for low in range(0, len(fresh), _BATCH):
        client.log_batch(run_id, metrics=fresh[low : low + _BATCH])
    return len(fresh)


def log_figure(client: Any, run_id: str, figure: Any, artifact_file: str) -> None:
    """Log a matplotlib figure to the run (replacing an earlier one at the same path) and close it."""
    import matplotlib.pyplot as plt

    client.log_figure(run_id, figure, artifact_file)
    plt.close(figure)


def json_records(frame: Any) -> list[dict[str, Any]]:
    """A pandas frame's rows as JSON-able dicts (NaN -> None, times in ISO 8601), for ``log_dict``."""
    import json

    return json.loads(frame.to_json(orient="records", date_format="iso"))


def monitoring_client(work: Paths) -> Any:
    """The MLflow client of ``work``'s store (also points the fluent API at it)."""
    return registry.client(work)
