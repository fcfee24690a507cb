"""Classification metrics by name, with the direction that counts as better.

scikit-learn is imported when a metric is computed: every `loom` job imports this module (through the
CLI's parser), and most never compute one (importing scikit-learn and scipy costs about a second).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray, float], float]


def _roc_auc(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    from sklearn import metrics as skm

    return float(skm.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def _pr_auc(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    from sklearn import metrics as skm

    return float(skm.average_precision_score(y, p)) if y.any() else float("nan")


def _log_loss(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    from sklearn import metrics as skm

    return float(skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]))


def _brier(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    from sklearn import metrics as skm

    return float(skm.brier_score_loss(y, p))


def _accuracy(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    from sklearn import metrics as skm

    return float(skm.accuracy_score(y, p >= threshold))


def _precision(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    from sklearn import metrics as skm

    return float(skm.precision_score(y, p >= threshold, zero_division=0))


def _recall(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    from sklearn import metrics as skm

    return float(skm.recall_score(y, p >= threshold, zero_division=0))


# name -> (function, higher is better)
METRICS: dict[str, tuple[MetricFn, bool]] = {
    "roc_auc": (_roc_auc, True),
    "pr_auc": (_pr_auc, True),
    "log_loss": (_log_loss, False),
    "brier": (_brier, False),
    "accuracy": (_accuracy, True),
    "precision": (_precision, True),
    "recall": (_recall, True),
}


def evaluate(
    labels: Iterable[int], scores: Iterable[float], names: Iterable[str], threshold: float
) -> dict[str, float]:
    """``{metric: value}`` for scores (probabilities of class 1) against 0/1 labels."""
    y = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels, dtype=int)
    p = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=float)
    return {name: METRICS[name][0](y, p, threshold) for name in names}


def improvement(metric: str, new: float, old: float) -> float:
    """How much better ``new`` is than ``old`` (positive = better), whatever the metric's direction."""
    return new - old if METRICS[metric][1] else old - new
