"""The MLflow pyfunc Loom logs: an estimator plus the feature spec it was trained with.

``predict`` accepts either

* a feature frame holding every looked-up feature (what batch and stream
  scoring pass: they join point-in-time or streamed features themselves), or
* a frame of entity keys only: the model looks their features up in the
  online store (``model_config={"redis_url": ...}`` or ``REDIS_URL``).

Either way it applies the on-demand transforms (common.models.on_demand) and
returns the probability of class 1 (through the fast predictor logged with the
estimator when there is one: common.models.fast_predict), so training, batch, stream and REST run
one implementation of everything after the feature lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a core dependency
    PythonModel = object  # type: ignore[assignment,misc]

from common.compile.feature_spec import FeatureSpec
from common.errors import ConfigError, DataError
from common.models import fast_predict
from common.models.estimators import run_estimator
from common.models.on_demand import on_demand_columns, transform_inputs

FEATURE_SPEC = "feature_spec"
ESTIMATOR = "estimator"
FAST_PREDICTOR = "fast_predictor"  # optional: common.models.fast_predict


def request_fields(spec: FeatureSpec) -> tuple[str, ...]:
    """Columns the on-demand transforms read that are neither looked up nor made by an earlier transform.

    REST requests carry them per entity; absent ones are NaN.
    """
    known = set(spec.lookup_features)
    needed: list[str] = []
    for transform in spec.on_demand:
        for column in transform_inputs([transform]):
            if column not in known and column not in needed:
                needed.append(column)
        known.add(transform["name"])
    return tuple(needed)


def model_inputs(spec: FeatureSpec, lookup_values: np.ndarray, fields: Mapping[str, np.ndarray]) -> np.ndarray:
    """The estimator's input matrix (float64, C order): looked-up values, then the on-demand outputs.

    ``lookup_values`` is (rows, len(spec.lookup_features)), NaN = missing; ``fields`` holds the
    request-time columns (float64, one value per row; an absent one is all NaN). Batch, stream and
    REST all build the matrix here, so they agree to the bit.
    """
    rows, width = lookup_values.shape[0], len(spec.lookup_features)
    if not spec.on_demand:
        return np.ascontiguousarray(lookup_values, dtype=np.float64)
    out = np.empty((rows, width + len(spec.on_demand)), dtype=np.float64)
    out[:, :width] = lookup_values
    position = {name: i for i, name in enumerate(spec.lookup_features)}
    columns: dict[str, np.ndarray] = {}
    for name in transform_inputs(spec.on_demand):
        if name in position:
            columns[name] = out[:, position[name]]
        elif name in fields:
            columns[name] = np.asarray(fields[name], dtype=np.float64)
        else:
            columns[name] = np.full(rows, np.nan)  # an absent request field (or an output made later)
    on_demand_columns(columns, spec.on_demand)
    for offset, name in enumerate(spec.on_demand_outputs):
        out[:, width + offset] = columns[name]
    return out


def model_matrix(spec: FeatureSpec, features: pd.DataFrame) -> np.ndarray:
    """The estimator's input from a feature frame (batch, stream, training): see :func:`model_inputs`."""
    lookup = list(spec.lookup_features)
    block = features[lookup]
    if all(pd.api.types.is_numeric_dtype(t) for t in block.dtypes):
        values = block.to_numpy(dtype="float64", na_value=np.nan)  # fast path: REST and stream send numbers
    else:
        values = block.apply(pd.to_numeric, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    fields = {
        name: pd.to_numeric(features[name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        for name in request_fields(spec)
        if name in features.columns
    }
    return model_inputs(spec, values, fields)


class LoomModel(PythonModel):
    """Estimator + feature spec; see the module docstring for the two input shapes."""

    def load_context(self, context: Any) -> None:
        import joblib

        self.spec = FeatureSpec.load(context.artifacts[FEATURE_SPEC])
        self.estimator = joblib.load(context.artifacts[ESTIMATOR])
        self.config = dict(getattr(context, "model_config", None) or {})
        self._store = None
        fast = context.artifacts.get(FAST_PREDICTOR)
        # checked against the estimator on the holdout at training time (common.models.train)
        self.fast = fast_predict.loads(Path(fast).read_bytes()) if fast else None

    @property
    def feature_spec(self) -> FeatureSpec:
        return self.spec

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        """Probability of class 1 for each input row."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        lookup = list(self.spec.lookup_features)
        absent = [c for c in lookup if c not in frame.columns]
        if absent:
            if self.spec.entity_key not in frame.columns:
                raise DataError(
                    f"model {self.spec.model!r} got columns {list(frame.columns)}: it needs either the entity key "
                    f"{self.spec.entity_key!r} (features are looked up online) or all of its features "
                    f"(missing {absent[:5]}{'...' if len(absent) > 5 else ''}). Fix: pass one of the two"
                )
            frame = self._lookup(frame[self.spec.entity_key].tolist())
        return self.predict_features(frame)

    def predict_features(self, features: pd.DataFrame) -> np.ndarray:
        """Scores for a frame holding every looked-up feature."""
        return self.predict_matrix(model_matrix(self.spec, features))

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Scores for the estimator's input matrix (:func:`model_inputs`): the fast predictor when logged."""
        if len(matrix) == 0:
            return np.zeros(0)
        fast = getattr(self, "fast", None)
        if fast is not None:
            return fast.predict(matrix)
        scores = run_estimator(self.estimator, "predict", self.estimator.predict_proba, matrix, model=self.spec.model)
        return scores[:, 1].astype("float64")

    def _redis_url(self) -> str:
        """model_config's redis_url, else REDIS_URL, else the `loom redis start` server; never a new, empty one."""
        import os

        from common.runtime.redis_server import running_local_server
        from common.settings import paths

        url = self.config.get("redis_url") or os.environ.get("REDIS_URL") or running_local_server(paths().home)
        if not url:
            raise ConfigError(
                f"model {self.spec.model!r} got entity keys only, so it reads the online store, but none is "
                "configured. Fix: load it with model_config={'redis_url': ...}, or set REDIS_URL"
            )
        return url

    def _lookup(self, keys: list[Any]) -> pd.DataFrame:
        from common.models.online_features import lookup, open_model_store

        if self._store is None:
            self._store = open_model_store(self.spec, self._redis_url())
        return lookup(self._store, self.spec, keys).frame
