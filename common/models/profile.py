"""The training set's distribution, stored with the model, and the two drift statistics.

``training_profile(frame, features, scores)`` describes every feature (and the
holdout scores) as the training run saw them; ``log_training_profile`` stores
it as ``training_profile.json`` in the run. Per numeric feature:

* ``cuts``: the distinct 10%, 20%, ..., 90% quantiles of the non-missing values
  (each the smallest value with at least that share at or below it). Bin ``i`` holds the values with exactly ``i`` cuts ``<=`` them, so the bins
  are ``(-inf, c1), [c1, c2), ..., [ck, inf)`` (discrete features with ties get
  fewer, wider bins); ``proportions`` are the bins' shares of all rows, with
  missing values as one last bin;
* ``ecdf``: the empirical CDF of the non-missing values at up to 200 points —
  every distinct value when there are at most 200 (then the KS statistic
  below is exact), otherwise at 200 quantiles (KS within 1/200).

Categorical (non-numeric) features keep the shares of their 20 most frequent
values, of every other value, and of missing values; they get a PSI, no KS.

* **PSI** = ``sum_i (a_i - e_i) * ln(a_i / e_i)`` over the bins, with ``e`` the
  training shares and ``a`` the recent shares, each floored at 1e-4 so that an
  empty bin counts as a large change instead of dividing by zero.
* **KS** = ``max_z |F_train(z) - F_recent(z)|`` over every training ECDF point
  and every recent value (missing values left out), as ``scipy.stats.ks_2samp``.

Recent values may carry weights (e.g. how long the online store served each
value): shares and the recent ECDF are then weighted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from common.errors import DataError

PROFILE_FILE = "training_profile.json"
FORMAT = 1
BINS = 10
ECDF_POINTS = 200
TOP_CATEGORIES = 20
PSI_FLOOR = 1e-4
OTHER = "__other__"


def _numeric(values: pd.Series) -> dict[str, Any]:
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    present = np.sort(x[~np.isnan(x)])
    count = len(x)
    levels = np.arange(1, BINS) / BINS
    cuts = np.unique(np.quantile(present, levels, method="inverted_cdf")) if present.size else np.array([])
    bins = np.bincount(np.searchsorted(cuts, present, side="right"), minlength=cuts.size + 1)
    distinct = np.unique(present)
    points = (
        distinct
        if distinct.size <= ECDF_POINTS
        else np.unique(np.quantile(present, np.arange(1, ECDF_POINTS + 1) / ECDF_POINTS, method="inverted_cdf"))
    )
    cdf = np.searchsorted(present, points, side="right") / max(present.size, 1)
    return {
        "kind": "numeric",
        "count": count,
        "missing": float(1 - present.size / count) if count else 0.0,
        "cuts": cuts.tolist(),
        "proportions": [*(bins / max(count, 1)).tolist(), float((count - present.size) / max(count, 1))],
        "ecdf": {"values": points.tolist(), "cdf": cdf.tolist()},
    }


def _categorical(values: pd.Series) -> dict[str, Any]:
    count = len(values)
    present = values.dropna().astype(str)
    top = present.value_counts().head(TOP_CATEGORIES)
    categories = top.index.tolist()
    other = int(len(present) - top.sum())
    shares = [*(top.to_numpy() / max(count, 1)).tolist(), other / max(count, 1), (count - len(present)) / max(count, 1)]
    return {
        "kind": "categorical",
        "count": count,
        "missing": float((count - len(present)) / count) if count else 0.0,
        "categories": categories,
        "proportions": shares,
    }


def describe(values: pd.Series) -> dict[str, Any]:
    """The profile entry of one column: numeric (bool included) or categorical."""
    numeric = pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)
    return _numeric(values.astype(float) if numeric else values) if numeric else _categorical(values)


def training_profile(
    frame: pd.DataFrame, features: Iterable[str], scores: Sequence[float] | np.ndarray | None = None
) -> dict[str, Any]:
    """The distribution of each of ``features`` in ``frame`` (the training set), and of ``scores``
    (the model's holdout scores, the reference for the score distribution online) when given."""
    names = list(features)
    absent = [n for n in names if n not in frame.columns]
    if absent:
        raise DataError(f"the training frame lacks features {absent}. Fix: profile the model's lookup features")
    return {
        "format": FORMAT,
        "bins": BINS,
        "rows": len(frame),
        "features": {name: describe(frame[name]) for name in names},
        "score": None if scores is None else describe(pd.Series(np.asarray(scores, dtype=float))),
    }


def log_training_profile(profile: dict[str, Any]) -> None:
    """Store ``profile`` as ``training_profile.json`` in the active MLflow run (call inside ``start_run``)."""
    import mlflow

    mlflow.log_dict(profile, PROFILE_FILE)


def load_training_profile(client: Any, run_id: str) -> dict[str, Any] | None:
    """The profile a run logged, or None when it has none."""
    import json
    import tempfile
    from pathlib import Path

    names = {a.path for a in client.list_artifacts(run_id)}
    if PROFILE_FILE not in names:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, PROFILE_FILE, folder)
        return json.loads(Path(path).read_text())


def _weights(values: pd.Series, weights: Sequence[float] | np.ndarray | None) -> np.ndarray:
    return np.ones(len(values)) if weights is None else np.asarray(weights, dtype=float)


def proportions(
    entry: dict[str, Any], values: pd.Series, weights: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Shares of ``values`` (each counted with its weight, default 1) in the bins of a profile ``entry``
    (missing values last)."""
    w = _weights(values, weights)
    total = w.sum()
    if len(values) == 0 or total <= 0:
        return np.full(len(entry["proportions"]), math.nan)
    if entry["kind"] == "numeric":
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        present = ~np.isnan(x)
        cuts = np.asarray(entry["cuts"], dtype=float)
        index = np.searchsorted(cuts, x[present], side="right")
        bins = np.bincount(index, weights=w[present], minlength=cuts.size + 1)
        return np.append(bins, w[~present].sum()) / total
    text = values.astype(object)
    present = text.notna().to_numpy()
    shares = pd.Series(w[present]).groupby(text[present].astype(str).to_numpy()).sum()
    known = shares.reindex(entry["categories"], fill_value=0.0).to_numpy()
    return np.append(known, [w[present].sum() - known.sum(), w[~present].sum()]) / total


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index of ``actual`` shares against ``expected`` shares (see module doc)."""
    e = np.maximum(np.asarray(expected, dtype=float), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=float), PSI_FLOOR)
    if e.shape != a.shape:
        raise ValueError(f"PSI needs shares over the same bins; got {e.size} and {a.size}")
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(
    entry: dict[str, Any], values: pd.Series, weights: Sequence[float] | np.ndarray | None = None
) -> float | None:
    """KS statistic of the non-missing ``values`` (weighted ECDF when ``weights`` are given) against the
    profile's training ECDF (None: categorical feature, or no values on one side)."""
    if entry["kind"] != "numeric":
        return None
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    w = _weights(values, weights)
    present = ~np.isnan(x)
    order = np.argsort(x[present], kind="stable")
    recent, mass = x[present][order], w[present][order]
    points = np.asarray(entry["ecdf"]["values"], dtype=float)
    cdf = np.asarray(entry["ecdf"]["cdf"], dtype=float)
    if recent.size == 0 or points.size == 0 or mass.sum() <= 0:
        return None
    grid = np.union1d(points, recent)
    # F_train at z: the CDF at the largest training point <= z (0 below the smallest)
    at = np.searchsorted(points, grid, side="right") - 1
    train = np.where(at >= 0, cdf[np.maximum(at, 0)], 0.0)
    cumulative = np.concatenate([[0.0], np.cumsum(mass)]) / mass.sum()
    now = cumulative[np.searchsorted(recent, grid, side="right")]
    return float(np.max(np.abs(train - now)))


def compare(
    entry: dict[str, Any], values: pd.Series, weights: Sequence[float] | np.ndarray | None = None
) -> tuple[float | None, float | None]:
    """(PSI, KS) of recent ``values`` (optionally weighted) against a profile entry; (None, None) without any."""
    if len(values) == 0:
        return None, None
    return psi(entry["proportions"], proportions(entry, values, weights)), ks_statistic(entry, values, weights)
