"""Monitoring plots logged on a model version's run: metrics over time and drift per feature."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _figure(rows: int, height: float):
    import matplotlib

    matplotlib.use("Agg")  # headless: jobs run on servers and in schedulers
    import matplotlib.pyplot as plt

    return plt.subplots(rows, 1, figsize=(7, height), dpi=100)


def evaluation(rows: pd.DataFrame, calibration: pd.DataFrame, title: str):
    """Three panels: ROC AUC, precision and recall per bucket (every path), volume and matched
    predictions per bucket, and the reliability diagram of every matched prediction."""
    figure, (metrics, volume, reliability) = _figure(3, 10)
    figure.suptitle(title)
    rows = rows.sort_values("bucket_start")
    for path, part in rows.groupby("path"):
        style = "-" if path == "all" else ":"
        for metric, marker in (("roc_auc", "o"), ("precision", "s"), ("recall", "^")):
            metrics.plot(part["bucket_start"], part[metric], style, marker=marker, label=f"{metric} ({path})")
    metrics.set_ylim(0, 1.05)
    metrics.set_ylabel("metric")
    metrics.legend(fontsize=6, ncol=3)
    every = rows[rows["path"] == "all"]
    volume.bar(every["bucket_start"], every["volume"], label="predictions", alpha=0.5)
    volume.bar(every["bucket_start"], every["matched"], label="matched with an outcome", alpha=0.8)
    volume.set_ylabel("count")
    volume.legend(fontsize=7)
    reliability.plot([0, 1], [0, 1], ":", color="grey")
    if not calibration.empty:
        reliability.plot(calibration["mean_score"], calibration["rate"], "o-", label="matched predictions")
    reliability.set_xlabel("mean score")
    reliability.set_ylabel("observed rate")
    reliability.set_xlim(0, 1)
    reliability.set_ylim(0, 1)
    figure.autofmt_xdate()
    figure.tight_layout()
    return figure


def drift(rows: pd.DataFrame, psi_threshold: float, ks_threshold: float, title: str):
    """PSI (and KS) per feature and for the score, with the thresholds; drifted bars in red."""
    ordered = rows.sort_values("psi")
    figure, (psi_axes, ks_axes) = _figure(2, max(5, 0.5 * len(ordered) + 2))
    figure.suptitle(title)
    colors = np.where(ordered["drifted"], "tab:red", "tab:blue")
    psi_axes.barh(ordered["feature"], ordered["psi"], color=colors)
    psi_axes.axvline(psi_threshold, color="black", linestyle=":")
    psi_axes.set_xlabel("population stability index")
    ks_axes.barh(ordered["feature"], ordered["ks"].fillna(0.0), color=colors)
    ks_axes.axvline(ks_threshold, color="black", linestyle=":")
    ks_axes.set_xlabel("KS statistic (numeric features)")
    for axes in (psi_axes, ks_axes):
        axes.tick_params(axis="y", labelsize=6)
    figure.tight_layout()
    return figure
