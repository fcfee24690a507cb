"""A model's monitoring settings, with defaults when its metadata has none."""

from __future__ import annotations

from dataclasses import dataclass

from common.spec.base import duration_seconds
from common.spec.monitoring import DriftRule, Evaluation, Retrain


@dataclass(frozen=True)
class MonitoringSettings:
    """``evaluation``, ``drift`` and ``retrain`` of one model, plus its action threshold and schedule."""

    evaluation: Evaluation
    drift: DriftRule
    retrain: Retrain
    threshold: float = 0.5
    schedule: str | None = None

    @property
    def label_delay_s(self) -> int:
        return duration_seconds(self.evaluation.label_delay)

    @property
    def bucket_s(self) -> int:
        return duration_seconds(self.evaluation.bucket)

    @property
    def window_s(self) -> int:
        return duration_seconds(self.drift.window)


def settings_of(model_spec: object) -> MonitoringSettings:
    """The settings of a ``common.spec.models.Model``; missing sections take their defaults.

    ``getattr`` with defaults keeps this working whether or not ``Model`` declares
    ``evaluation``, ``drift`` and ``retrain``.
    """
    return MonitoringSettings(
        evaluation=getattr(model_spec, "evaluation", None) or Evaluation(),
        drift=getattr(model_spec, "drift", None) or DriftRule(),
        retrain=getattr(model_spec, "retrain", None) or Retrain(),
        threshold=float(getattr(model_spec, "threshold", 0.5)),
        schedule=getattr(model_spec, "schedule", None),
    )
