"""On-demand transforms: run inside the model's pyfunc, so training, batch
scoring, the stream and REST all apply this one implementation.

The transforms work on float64 numpy columns (NaN = missing), so the REST
fast path runs them without a DataFrame; :func:`apply_on_demand` is the pandas
adapter batch scoring and training use, and calls the same functions.

Semantics match the Spark transforms of the same ``fn`` (common.compile.transforms);
a test runs both on the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

Columns = Mapping[str, np.ndarray]
OnDemandFn = Callable[[Columns, dict[str, Any]], np.ndarray]
_FUNCTIONS: dict[str, OnDemandFn] = {}

# options of a transform that name an input column
INPUT_OPTIONS = ("input", "numerator", "denominator")


def _register(fn_name: str) -> Callable[[OnDemandFn], OnDemandFn]:
    def wrap(func: OnDemandFn) -> OnDemandFn:
        _FUNCTIONS[fn_name] = func
        return func

    return wrap


@_register("fill")
def _fill(columns: Columns, t: dict[str, Any]) -> np.ndarray:
    value = columns[t["input"]]
    return np.where(np.isnan(value), float(t["value"]), value)


@_register("clip")
def _clip(columns: Columns, t: dict[str, Any]) -> np.ndarray:
    value = columns[t["input"]]
    if t.get("min") is not None:
        value = np.maximum(value, float(t["min"]))  # NaN stays NaN
    if t.get("max") is not None:
        value = np.minimum(value, float(t["max"]))
    return value


@_register("bucketize")
def _bucketize(columns: Columns, t: dict[str, Any]) -> np.ndarray:
    value = columns[t["input"]]
    index = np.zeros(len(value))
    for split in t["splits"]:
        index += value >= split
    index[np.isnan(value)] = np.nan
    return index


@_register("ratio")
def _ratio(columns: Columns, t: dict[str, Any]) -> np.ndarray:
    numerator, denominator = columns[t["numerator"]], columns[t["denominator"]]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = numerator / denominator
    out[denominator == 0] = np.nan
    return out


@_register("log")
def _log(columns: Columns, t: dict[str, Any]) -> np.ndarray:
    value = columns[t["input"]]
    with np.errstate(invalid="ignore"):
        return np.log1p(np.where(value >= 0, value, np.nan))


def on_demand_columns(columns: dict[str, np.ndarray], transforms: Iterable[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Add one float64 column per transform to ``columns`` (in place, in order; later ones may read earlier ones)."""
    for transform in transforms:
        columns[transform["name"]] = _FUNCTIONS[transform["fn"]](columns, transform)
    return columns


def transform_inputs(transforms: Iterable[dict[str, Any]]) -> list[str]:
    """Every column a transform reads, in order of first use."""
    found: list[str] = []
    for transform in transforms:
        for option in INPUT_OPTIONS:
            column = transform.get(option)
            if isinstance(column, str) and column not in found:
                found.append(column)
    return found


def apply_on_demand(frame: pd.DataFrame, transforms: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """``frame`` plus one column per transform, in order (later ones may read earlier outputs).

    Inputs are read as numbers (anything else counts as missing), like the Spark transforms.
    """
    transforms = list(transforms)
    columns = {
        name: pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        for name in transform_inputs(transforms)
        if name in frame.columns
    }
    on_demand_columns(columns, transforms)
    out = frame.copy()
    for name in (t["name"] for t in transforms):
        out[name] = pd.Series(columns[name], index=frame.index)
    return out


def known() -> list[str]:
    return sorted(_FUNCTIONS)
