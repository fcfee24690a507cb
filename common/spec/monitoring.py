"""Runtime monitoring of a model: evaluation against late labels, drift, and the retraining policy.

Three sub-models of a model's metadata (``models.<name>.evaluation``, ``.drift``
and ``.retrain``); every field has a default, so a model without them is
monitored with the defaults below.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.spec.base import Duration, Strict

MonitoredMetric = Literal["roc_auc", "precision", "recall"]
"""Metrics of the evaluation that a retraining rule can watch (higher is better)."""


class Evaluation(Strict):
    """How predictions are matched with outcomes that arrive later, and how results are bucketed."""

    label_delay: Duration = Field(
        default="30 days",
        description="a prediction at time p is matched with the entity's first outcome at a label time "
        "in [p, p + label_delay]; until then (and if none comes) it is not evaluated",
    )
    bucket: Duration = Field(default="1 day", description="metrics are computed per bucket of prediction time")


class DriftRule(Strict):
    """When a feature (or the score) counts as drifted: the recent window against the training set."""

    psi: float = Field(default=0.2, gt=0.0, description="population stability index at or above this is drift")
    ks: float = Field(default=0.2, gt=0.0, le=1.0, description="KS statistic at or above this is drift (numeric)")
    window: Duration = Field(default="7 days", description="recent online features and predictions to compare")


class MinMetric(Strict):
    """Retrain when the latest evaluated bucket's metric falls below ``below``."""

    metric: MonitoredMetric = "roc_auc"
    below: float = Field(gt=0.0, le=1.0)
    min_labels: int = Field(
        default=50, ge=1, description="only buckets with at least this many matched outcomes count (noise)"
    )


class Retrain(Strict):
    """When ``loom retrain`` trains a challenger (which the promotion rule may then promote)."""

    on_drift: bool = Field(default=True, description="retrain when any feature or the score has drifted")
    min_metric: MinMetric | None = Field(default=None, description="retrain when the metric falls below a floor")
    on_schedule: bool = Field(
        default=True, description="retrain when the model's schedule (cron) ticked since the latest version"
    )
