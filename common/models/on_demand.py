"""On-demand transforms in pandas: run inside the model's pyfunc, so training,
batch scoring, the stream and REST all apply this one implementation.

Semantics match the Spark transforms of the same ``fn`` (common.compile.transforms);
a test runs both on the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

OnDemandFn = Callable[[pd.DataFrame, dict[str, Any]], pd.Series]
_FUNCTIONS: dict[str, OnDemandFn] = {}


def _register(fn_name: str) -> Callable[[OnDemandFn], OnDemandFn]:
    def wrap(func: OnDemandFn) -> OnDemandFn:
        _FUNCTIONS[fn_name] = func
        return func

    return wrap


def _number(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(frame[column], errors="coerce").astype("float64")


@_register("fill")
def _fill(frame: pd.DataFrame, t: dict[str, Any]) -> pd.Series:
    return frame[t["input"]].fillna(t["value"])


@_register("clip")
def _clip(frame: pd.DataFrame, t: dict[str, Any]) -> pd.Series:
    return _number(frame, t["input"]).clip(lower=t.get("min"), upper=t.get("max"))


@_register("bucketize")
def _bucketize(frame: pd.DataFrame, t: dict[str, Any]) -> pd.Series:
    value = _number(frame, t["input"])
    index = np.zeros(len(value))
    for split in t["splits"]:
        index += (value >= split).to_numpy(dtype="float64")
    return pd.Series(index, index=frame.index).where(value.notna())


@_register("ratio")
def _ratio(frame: pd.DataFrame, t: dict[str, Any]) -> pd.Series:
    numerator, denominator = _number(frame, t["numerator"]), _number(frame, t["denominator"])
    return (numerator / denominator).where(denominator != 0)


@_register("log")
def _log(frame: pd.DataFrame, t: dict[str, Any]) -> pd.Series:
    value = _number(frame, t["input"])
    return np.log1p(value.where(value >= 0))


def apply_on_demand(frame: pd.DataFrame, transforms: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """``frame`` plus one column per transform, in order (later ones may read earlier outputs)."""
    out = frame.copy()
    for transform in transforms:
        out[transform["name"]] = _FUNCTIONS[transform["fn"]](out, transform)
    return out


def known() -> list[str]:
    return sorted(_FUNCTIONS)
