"""Metrics of one bucket of predictions, in pandas (run per group with ``applyInPandas``).

Over the matched predictions (label known):

* ``roc_auc``: null unless both classes are present;
* ``precision`` and ``recall`` at the action threshold (score >= threshold is
  a positive prediction): null when undefined (nothing predicted positive, no
  positive label), never 0 by convention, so an empty bucket cannot look bad;
* calibration: ``mean_score`` against ``observed_rate`` (the share of label 1),
  and the expected calibration error ``ece`` over 10 equal-width score bins
  ``[0, 0.1), ..., [0.9, 1.0]``: ``sum_b n_b / n * |mean score_b - rate_b|``;
* ``volume``: every prediction of the bucket (matched, pending or expired).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from common.monitoring.matching import EXPIRED, MATCHED, PENDING, STATUS

ECE_BINS = 10
# every prediction of a bucket, and how many are matched, pending or expired
PREDICTION_COUNTS: tuple[str, ...] = ("volume", "matched", "pending", "expired")
# plus the matched predictions whose label is 1
COUNT_COLUMNS: tuple[str, ...] = (*PREDICTION_COUNTS, "positives")
# of the matched predictions: classification_metrics()
CLASSIFICATION_COLUMNS: tuple[str, ...] = ("roc_auc", "precision", "recall", "mean_score", "observed_rate", "ece")
METRIC_COLUMNS: tuple[str, ...] = (*COUNT_COLUMNS, *CLASSIFICATION_COLUMNS)
# what `loom evaluate` logs to MLflow per bucket, as eval_<path>_<metric> (not positives, which
# equals matched × observed_rate)
LOGGED_METRICS: tuple[str, ...] = (*CLASSIFICATION_COLUMNS, *PREDICTION_COUNTS)


def calibration_bins(labels: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS) -> pd.DataFrame:
    """Per equal-width score bin: count, mean score and observed rate (empty bins left out)."""
    index = np.clip((scores * bins).astype(int), 0, bins - 1)  # a score of exactly 1.0 goes in the last bin
    frame = pd.DataFrame({"bin": index, "score": scores, "label": labels})
    grouped = frame.groupby("bin").agg(count=("label", "size"), mean_score=("score", "mean"), rate=("label", "mean"))
    return grouped.reset_index()


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS) -> float:
    """``sum_b n_b / n * |mean score_b - observed rate_b|`` over equal-width bins; NaN when empty."""
    if len(labels) == 0:
        return math.nan
    table = calibration_bins(labels, scores, bins)
    return float((table["count"] / len(labels) * (table["mean_score"] - table["rate"]).abs()).sum())


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC AUC, precision, recall, mean score, observed rate and ECE of matched predictions."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=int)
    p = np.asarray(scores, dtype=float)
    nan = math.nan
    if len(y) == 0:
        return dict.fromkeys(CLASSIFICATION_COLUMNS, nan)
    predicted = p >= threshold
    true_positive = int((predicted & (y == 1)).sum())
    return {
        "roc_auc": float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else nan,
        "precision": true_positive / int(predicted.sum()) if predicted.any() else nan,
        "recall": true_positive / int((y == 1).sum()) if (y == 1).any() else nan,
        "mean_score": float(p.mean()),
        "observed_rate": float(y.mean()),
        "ece": expected_calibration_error(y, p),
    }


def bucket_metrics(rows: pd.DataFrame, threshold: float) -> dict[str, float]:
    """All of :data:`METRIC_COLUMNS` for one bucket's rows (columns ``score``, ``label``, ``status``)."""
    status = rows[STATUS]
    matched = rows[status == MATCHED]
    values: dict[str, float] = {
        "volume": len(rows),
        "matched": len(matched),
        "pending": int((status == PENDING).sum()),
        "expired": int((status == EXPIRED).sum()),
        "positives": int((matched["label"] == 1).sum()),
    }
    values.update(classification_metrics(matched["label"].to_numpy(), matched["score"].to_numpy(), threshold))
    return values
