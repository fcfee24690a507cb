"""Fast predictors: the estimator's probability of class 1 without its per-call overhead.

At one row, scikit-learn spends most of a ``predict_proba`` on input
validation, feature-name checks and starting its OpenMP pool; the arithmetic
is a few microseconds. A fast predictor does only the arithmetic, with a
well-kept compiled library where there is one:

* scikit-learn's HistGradientBoostingClassifier (numerical splits; churn's
  estimator) -> its trees packed into flat numpy arrays and walked for every
  (row, tree) at once, one level per step: a handful of vectorized operations
  per level instead of scikit-learn's validation and OpenMP start-up. treelite's
  GTIL was measured first: about 10x slower per row than this walk here;
* other tree ensembles (GradientBoosting, RandomForest, ExtraTrees; XGBoost,
  LightGBM) -> treelite's GTIL (C++, float64 thresholds, one thread for small
  batches);
* linear classifiers with ``coef_``/``intercept_`` (LogisticRegression, ...)
  -> one float64 matrix product and the logistic function;
* a scikit-learn Pipeline (``preprocessing:`` steps, then the estimator) whose
  steps are SimpleImputer (numeric statistics, no indicator), StandardScaler,
  MinMaxScaler (no clip), MaxAbsScaler or RobustScaler, and whose estimator has
  a backend above -> those steps as numpy operations, then that backend. Any
  other step (an encoder, a custom transformer) means no fast predictor: the
  pyfunc then scores with the Pipeline itself, on every path alike.

A backend is a :class:`FastPredictor` subclass with ``build`` (from a fitted
estimator, None when it does not apply), ``dumps``/``loads`` (the artifact
logged next to the estimator in MLflow) and ``predict``. The training job
builds the first backend that applies and checks it against the estimator on
the holdout (:func:`check_fast_predictor`): more than ``TOLERANCE`` apart
anywhere, and training fails. The pyfunc then scores with it everywhere
(batch, stream, REST), so the paths stay exactly equal to each other.
"""

from __future__ import annotations

import io
import json
import logging
import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from common.errors import ModelError

log = logging.getLogger(__name__)

TOLERANCE = 1e-6
SMALL_BATCH = 256  # rows scored on one thread: a thread pool's wake-up costs more than it saves
_MAGIC = b"LOOMFAST1\n"


class FastPredictor(ABC):
    """Probability of class 1 for a float64 (rows, inputs) matrix, as the estimator computes it."""

    kind: ClassVar[str]

    @classmethod
    @abstractmethod
    def build(cls, estimator: Any) -> FastPredictor | None:
        """A predictor for ``estimator`` (fitted), or None when this backend does not apply to it."""

    @abstractmethod
    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """float64 scores, one per row."""

    @abstractmethod
    def dumps(self) -> bytes:
        """The artifact's payload."""

    @classmethod
    @abstractmethod
    def loads(cls, payload: bytes) -> FastPredictor:
        """The predictor of a :meth:`dumps` payload."""


class HistGradientBoostingPredictor(FastPredictor):
    """A binary HistGradientBoostingClassifier as flat arrays, walked level by level for all trees at once.

    Leaves point to themselves, so ``depth`` steps bring every (row, tree) to its leaf.
    Same rule as scikit-learn's predictor: NaN goes where ``missing_go_to_left`` says,
    else left when ``x <= threshold``; raw score = baseline + sum of the leaf values.
    """

    kind = "hist_gradient_boosting"
    _ARRAYS = ("feature", "threshold", "missing_left", "children", "value", "roots")

    def __init__(self, arrays: dict[str, np.ndarray], baseline: float, depth: int) -> None:
        self.feature = np.ascontiguousarray(arrays["feature"], dtype=np.intp)
        self.threshold = np.ascontiguousarray(arrays["threshold"], dtype=np.float64)
        self.missing_left = np.ascontiguousarray(arrays["missing_left"], dtype=bool)
        self.children = np.ascontiguousarray(arrays["children"], dtype=np.intp)  # (nodes, 2): left, right
        self.value = np.ascontiguousarray(arrays["value"], dtype=np.float64)
        self.roots = np.ascontiguousarray(arrays["roots"], dtype=np.intp)
        self.baseline = float(baseline)
        self.depth = int(depth)

    @classmethod
    def build(cls, estimator: Any) -> HistGradientBoostingPredictor | None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        # isinstance, like the converters: a subclass that changes predict_proba is caught by the holdout check
        if not isinstance(estimator, HistGradientBoostingClassifier) or not hasattr(estimator, "_predictors"):
            return None
        if len(getattr(estimator, "classes_", ())) != 2 or any(len(trees) != 1 for trees in estimator._predictors):
            return None
        features, thresholds, missing, children, values, roots = [], [], [], [], [], []
        offset, depth = 0, 0
        for (tree,) in estimator._predictors:
            nodes = tree.nodes
            if nodes["is_categorical"].any():
                return None  # categorical splits use bitsets: left to the estimator
            leaf = nodes["is_leaf"].astype(bool)
            own = np.arange(len(nodes)) + offset
            left = np.where(leaf, own, nodes["left"].astype(np.intp) + offset)
            right = np.where(leaf, own, nodes["right"].astype(np.intp) + offset)
            features.append(np.where(leaf, 0, nodes["feature_idx"]))
            thresholds.append(nodes["num_threshold"])
            missing.append(nodes["missing_go_to_left"].astype(bool))
            children.append(np.column_stack([left, right]))
            values.append(np.where(leaf, nodes["value"], 0.0))
            roots.append(offset)
            depth = max(depth, int(nodes["depth"].max()))
            offset += len(nodes)
        arrays = {
            "feature": np.concatenate(features),
            "threshold": np.concatenate(thresholds),
            "missing_left": np.concatenate(missing),
            "children": np.concatenate(children),
            "value": np.concatenate(values),
            "roots": np.asarray(roots),
        }
        return cls(arrays, float(np.asarray(estimator._baseline_prediction).reshape(-1)[0]), depth)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        rows, width = matrix.shape
        matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        flat, children = matrix.ravel(), self.children.ravel()
        start = (np.arange(rows) * width)[:, None]  # where each row starts in the flat matrix
        node = np.repeat(self.roots[None, :], rows, axis=0)  # (rows, trees)
        for _ in range(self.depth):
            x = flat[start + self.feature[node]]
            right = np.where(x != x, ~self.missing_left[node], x > self.threshold[node])  # x != x: NaN
            node = children[2 * node + right]
        return expit(self.baseline + self.value[node].sum(axis=1))

    def dumps(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {name: getattr(self, name) for name in self._ARRAYS}
        np.savez(buffer, baseline=np.array([self.baseline]), depth=np.array([self.depth]), **arrays)
        return buffer.getvalue()

    @classmethod
    def loads(cls, payload: bytes) -> HistGradientBoostingPredictor:
        data = np.load(io.BytesIO(payload))
        return cls({name: data[name] for name in cls._ARRAYS}, float(data["baseline"][0]), int(data["depth"][0]))


class LinearPredictor(FastPredictor):
    """``1 / (1 + exp(-(x @ w + b)))`` for binary linear classifiers."""

    kind = "linear"

    def __init__(self, weights: np.ndarray, intercept: float) -> None:
        self.weights = np.ascontiguousarray(weights, dtype=np.float64)
        self.intercept = float(intercept)

    @classmethod
    def build(cls, estimator: Any) -> LinearPredictor | None:
        coef, intercept = getattr(estimator, "coef_", None), getattr(estimator, "intercept_", None)
        classes = getattr(estimator, "classes_", None)
        if coef is None or intercept is None or classes is None or len(classes) != 2:
            return None
        coef = np.asarray(coef, dtype=np.float64)
        if coef.ndim != 2 or coef.shape[0] != 1:
            return None
        return cls(coef[0], float(np.asarray(intercept).reshape(-1)[0]))

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        return expit(matrix @ self.weights + self.intercept)

    def dumps(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, weights=self.weights, intercept=np.array([self.intercept]))
        return buffer.getvalue()

    @classmethod
    def loads(cls, payload: bytes) -> LinearPredictor:
        data = np.load(io.BytesIO(payload))
        return cls(data["weights"], float(data["intercept"][0]))


class TreelitePredictor(FastPredictor):
    """Tree ensembles through treelite's GTIL (general tree inference, no compiler needed)."""

    kind = "treelite"

    def __init__(self, model: Any) -> None:
        import treelite.gtil

        self.model = model
        self._predict = treelite.gtil.predict
        self._threads = max(1, os.cpu_count() or 1)

    @classmethod
    def build(cls, estimator: Any) -> TreelitePredictor | None:
        module = type(estimator).__module__
        if not module.startswith(("sklearn.ensemble", "xgboost", "lightgbm")):
            return None
        classes = getattr(estimator, "classes_", None)
        if classes is None or len(classes) != 2:
            return None
        try:
            import treelite
        except ImportError:
            return None
        try:
            if module.startswith("xgboost"):
                model = treelite.frontend.from_xgboost(estimator.get_booster())
            elif module.startswith("lightgbm"):
                model = treelite.frontend.from_lightgbm(estimator.booster_)
            else:
                model = treelite.sklearn.import_model(estimator)
        except Exception as err:  # an ensemble treelite cannot import (categorical splits, ...): no fast path
            log.info("treelite cannot import %s (%s); scoring uses the estimator", type(estimator).__name__, err)
            return None
        return cls(model)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        threads = 1 if matrix.shape[0] < SMALL_BATCH else self._threads
        out = self._predict(self.model, matrix, nthread=threads)
        out = np.asarray(out, dtype=np.float64).reshape(matrix.shape[0], -1)
        return out[:, -1]  # binary: P(class 1) is the last (or only) column

    def dumps(self) -> bytes:
        return bytes(self.model.serialize_bytes())

    @classmethod
    def loads(cls, payload: bytes) -> TreelitePredictor:
        import treelite

        return cls(treelite.Model.deserialize_bytes(payload))


class PipelinePredictor(FastPredictor):
    """A Pipeline of column-wise affine steps and missing-value fills, then another backend's predictor.

    Each step is (``fill``, ``shift``, ``scale``, ``offset``) per column, applied in scikit-learn's own
    order of operations so the results agree to the last bits: ``fill`` replaces NaN (an imputer);
    then ``x = (x - shift) / scale * mul + offset`` with the unused parts neutral.
    """

    kind = "pipeline"

    def __init__(self, steps: list[dict[str, np.ndarray]], final: FastPredictor) -> None:
        self.steps = steps
        self.final = final

    @classmethod
    def build(cls, estimator: Any) -> PipelinePredictor | None:
        from sklearn.pipeline import Pipeline

        if not isinstance(estimator, Pipeline) or len(estimator.steps) < 2:
            return None
        steps = []
        for _, step in estimator.steps[:-1]:
            arrays = _step_arrays(step)
            if arrays is None:
                log.info("no fast predictor for pipeline step %s; scoring uses the Pipeline", type(step).__name__)
                return None
            steps.append(arrays)
        final = build_fast_predictor(estimator.steps[-1][1])
        return None if final is None or isinstance(final, PipelinePredictor) else cls(steps, final)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        x = np.array(matrix, dtype=np.float64, copy=True)
        for step in self.steps:
            if "fill" in step:
                x = np.where(np.isnan(x), step["fill"], x)
            if "shift" in step:
                x -= step["shift"]
            if "divide" in step:
                x /= step["divide"]
            if "multiply" in step:
                x *= step["multiply"]
            if "offset" in step:
                x += step["offset"]
        return self.final.predict(x)

    def dumps(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {f"{i}.{name}": value for i, step in enumerate(self.steps) for name, value in step.items()}
        np.savez(buffer, steps=np.array([len(self.steps)]), final=np.frombuffer(dumps(self.final), np.uint8), **arrays)
        return buffer.getvalue()

    @classmethod
    def loads(cls, payload: bytes) -> PipelinePredictor:
        data = np.load(io.BytesIO(payload))
        steps: list[dict[str, np.ndarray]] = [{} for _ in range(int(data["steps"][0]))]
        for name in data.files:
            index, _, part = name.partition(".")
            if part:
                steps[int(index)][part] = data[name]
        return cls(steps, loads(data["final"].tobytes()))


def _step_arrays(step: Any) -> dict[str, np.ndarray] | None:
    """The column operations of a fitted preprocessing step, in scikit-learn's order; None when unsupported."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler

    kind = type(step)
    if kind is SimpleImputer:
        stats = np.asarray(getattr(step, "statistics_", np.array([np.nan])))
        missing = step.missing_values
        missing_is_nan = isinstance(missing, float) and missing != missing
        if step.add_indicator or not missing_is_nan or stats.dtype.kind not in "fiu" or np.isnan(stats).any():
            return None  # an indicator adds columns; an all-missing column is dropped by scikit-learn
        return {"fill": stats.astype(np.float64)}
    if kind is StandardScaler:
        arrays = {}
        if step.mean_ is not None and step.with_mean:
            arrays["shift"] = np.asarray(step.mean_, dtype=np.float64)
        if step.scale_ is not None and step.with_std:
            arrays["divide"] = np.asarray(step.scale_, dtype=np.float64)
        return arrays
    if kind is RobustScaler:
        arrays = {}
        if step.center_ is not None and step.with_centering:
            arrays["shift"] = np.asarray(step.center_, dtype=np.float64)
        if step.scale_ is not None and step.with_scaling:
            arrays["divide"] = np.asarray(step.scale_, dtype=np.float64)
        return arrays
    if kind is MinMaxScaler and not step.clip:
        return {"multiply": np.asarray(step.scale_, dtype=np.float64), "offset": np.asarray(step.min_, np.float64)}
    if kind is MaxAbsScaler:
        return {"divide": np.asarray(step.scale_, dtype=np.float64)}
    return None


BACKENDS: list[type[FastPredictor]] = [
    PipelinePredictor,
    HistGradientBoostingPredictor,
    TreelitePredictor,
    LinearPredictor,
]


def build_fast_predictor(estimator: Any) -> FastPredictor | None:
    """The first backend that applies to ``estimator`` (None: score with the estimator itself)."""
    for backend in BACKENDS:
        predictor = backend.build(estimator)
        if predictor is not None:
            return predictor
    return None


def check_fast_predictor(
    predictor: FastPredictor, estimator: Any, matrix: np.ndarray, *, model: str, tolerance: float = TOLERANCE
) -> float:
    """The largest difference between ``predictor`` and ``estimator.predict_proba`` on ``matrix``.

    Raises :class:`common.errors.ModelError` when it exceeds ``tolerance`` (or a score is NaN on one side only).
    """
    matrix = np.ascontiguousarray(matrix, dtype=np.float64)
    expected = np.asarray(estimator.predict_proba(matrix)[:, 1], dtype=np.float64)
    got = np.asarray(predictor.predict(matrix), dtype=np.float64)
    if got.shape != expected.shape:
        raise ModelError(
            f"model {model!r}: the fast predictor ({predictor.kind}) returned {got.shape[0]} scores for "
            f"{expected.shape[0]} holdout rows. Fix: report this estimator ({type(estimator).__name__}) as unsupported"
        )
    gap = np.abs(got - expected)
    gap[np.isnan(got) & np.isnan(expected)] = 0.0
    gap[np.isnan(gap)] = np.inf
    worst = int(np.argmax(gap)) if len(gap) else 0
    largest = float(gap[worst]) if len(gap) else 0.0
    if largest > tolerance:
        raise ModelError(
            f"model {model!r}: the fast predictor ({predictor.kind}) disagrees with "
            f"{type(estimator).__name__}.predict_proba on the holdout: {int((gap > tolerance).sum())} of {len(gap)} "
            f"rows differ by more than {tolerance:g} (largest {largest:.3g} at row {worst}: {got[worst]!r} vs "
            f"{expected[worst]!r}). Training stopped: serving would not score like this estimator. Fix: use a "
            "supported estimator class, or report the mismatch"
        )
    return largest


def dumps(predictor: FastPredictor) -> bytes:
    """The artifact file's bytes: a header naming the backend, then its payload."""
    header = json.dumps({"kind": predictor.kind}).encode()
    return _MAGIC + header + b"\n" + predictor.dumps()


def loads(data: bytes) -> FastPredictor:
    """The predictor of an artifact written by :func:`dumps`."""
    if not data.startswith(_MAGIC):
        raise ModelError("the fast predictor artifact is not a Loom fast predictor. Fix: retrain the model")
    header, _, payload = data[len(_MAGIC) :].partition(b"\n")
    kind = json.loads(header)["kind"]
    for backend in BACKENDS:
        if backend.kind == kind:
            return backend.loads(payload)
    raise ModelError(f"the fast predictor artifact uses backend {kind!r}, unknown here. Fix: upgrade Loom or retrain")
