"""The MLflow pyfunc Loom logs: an estimator plus the feature spec it was trained with.

``predict`` accepts either

* a feature frame holding every looked-up feature (what batch and stream
  scoring pass: they join point-in-time or streamed features themselves), or
* a frame of entity keys only: the model looks their features up in the
  online store (``model_config={"redis_url": ...}`` or ``REDIS_URL``).

Either way it applies the on-demand transforms (common.models.on_demand) and
returns the probability of class 1, so training, batch, stream and REST run
one implementation of everything after the feature lookup.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a core dependency
    PythonModel = object  # type: ignore[assignment,misc]

from common.compile.feature_spec import FeatureSpec
from common.errors import ConfigError, DataError
from common.models.on_demand import apply_on_demand

FEATURE_SPEC = "feature_spec"
ESTIMATOR = "estimator"


def model_matrix(spec: FeatureSpec, features: pd.DataFrame) -> np.ndarray:
    """The estimator's input: looked-up features plus on-demand outputs, as float64 (NaN = missing)."""
    lookup = list(spec.lookup_features)
    block = features[lookup]
    if all(pd.api.types.is_numeric_dtype(t) for t in block.dtypes):
        values = block.to_numpy(dtype="float64", na_value=np.nan)  # fast path: REST and stream send numbers
    else:
        values = block.apply(pd.to_numeric, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    if not spec.on_demand:
        return values
    frame = pd.DataFrame(values, columns=lookup, index=features.index)
    extra = [c for c in features.columns if c not in frame.columns]
    frame = pd.concat([frame, features[extra]], axis=1) if extra else frame
    frame = apply_on_demand(frame, spec.on_demand)
    return frame[list(spec.inputs)].to_numpy(dtype="float64", na_value=np.nan)


class LoomModel(PythonModel):
    """Estimator + feature spec; see the module docstring for the two input shapes."""

    def load_context(self, context: Any) -> None:
        import joblib

        self.spec = FeatureSpec.load(context.artifacts[FEATURE_SPEC])
        self.estimator = joblib.load(context.artifacts[ESTIMATOR])
        self.config = dict(getattr(context, "model_config", None) or {})
        self._store = None

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
        if len(features) == 0:
            return np.zeros(0)
        return self.estimator.predict_proba(model_matrix(self.spec, features))[:, 1].astype("float64")

    def _redis_url(self) -> str:
        """model_config's redis_url, else REDIS_URL, else the `loom redis start` server; never a new, empty one."""
        import os

        from common.redis_server import running_local_server
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
