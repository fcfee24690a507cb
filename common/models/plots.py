"""Evaluation plots logged with each training run: ROC, precision-recall,
calibration and feature importances (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _figure(title: str):
    import matplotlib

    matplotlib.use("Agg")  # headless: jobs run on servers and in schedulers
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 4), dpi=100)
    axes.set_title(title)
    return figure, axes


def roc_curve(labels: np.ndarray, scores: np.ndarray, title: str = "ROC (time holdout)"):
    """ROC curve with its AUC in the legend."""
    from sklearn.metrics import RocCurveDisplay

    figure, axes = _figure(title)
    RocCurveDisplay.from_predictions(labels, scores, ax=axes)
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    figure.tight_layout()
    return figure


def pr_curve(labels: np.ndarray, scores: np.ndarray, title: str = "Precision-recall (time holdout)"):
    """Precision-recall curve with the average precision in the legend."""
    from sklearn.metrics import PrecisionRecallDisplay

    figure, axes = _figure(title)
    PrecisionRecallDisplay.from_predictions(labels, scores, ax=axes)
    figure.tight_layout()
    return figure


def calibration(labels: np.ndarray, scores: np.ndarray, bins: int = 10, title: str = "Calibration (time holdout)"):
    """Observed rate per predicted-probability bin against the diagonal."""
    from sklearn.calibration import CalibrationDisplay

    figure, axes = _figure(title)
    CalibrationDisplay.from_predictions(labels, scores, n_bins=bins, strategy="quantile", ax=axes)
    figure.tight_layout()
    return figure


def importances(values: Mapping[str, float], title: str = "Feature importance (permutation, holdout)"):
    """Horizontal bars, most important on top."""
    ordered = sorted(values.items(), key=lambda item: item[1])
    figure, axes = _figure(title)
    figure.set_size_inches(6, max(3, 0.25 * len(ordered) + 1))
    axes.barh([name for name, _ in ordered], [value for _, value in ordered])
    axes.set_xlabel("drop in ROC AUC when shuffled")
    figure.tight_layout()
    return figure


def contributions(rows, title: str, top: int = 12):
    """One prediction's feature contributions (``common.models.explain``): bars, red raise the score."""
    shown = rows.head(top).iloc[::-1]
    figure, axes = _figure(title)
    figure.set_size_inches(6, max(3, 0.3 * len(shown) + 1))
    colors = ["tab:red" if value > 0 else "tab:blue" for value in shown["contribution"]]
    axes.barh(shown["feature"], shown["contribution"], color=colors)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel("score minus score with the feature at its median")
    figure.tight_layout()
    return figure
