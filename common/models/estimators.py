"""Estimators by import path, e.g. ``sklearn.ensemble.HistGradientBoostingClassifier``, and the model's
scikit-learn Pipeline (``preprocessing:`` steps, then the estimator); estimator failures as user errors."""

from __future__ import annotations

import importlib
import re
import types
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from common.errors import ConfigError, EstimatorError, SpecError
from common.spec.models import Estimator, Model, Step

T = TypeVar("T")
ESTIMATOR_STEP = "estimator"  # the Pipeline's last step

# top-level package -> the pip extra that installs it
_EXTRAS = {"xgboost": "xgboost", "lightgbm": "lightgbm"}


def build_estimator(spec: Estimator | Step, where: str, file: str | None = None, *, transformer: bool = False) -> Any:
    """A new, unfitted estimator (or, with ``transformer``, a preprocessing step); errors name the YAML
    path, the class and the fix."""

    def problem(message: str, *, params: bool = False, fix: str | None = None) -> SpecError:
        """The error at ``<where>.class`` showing the class, or at ``<where>.params`` showing the params."""
        key, value = ("params", spec.params) if params else ("class", spec.class_)
        return SpecError(message, file=file, path=f"{where}.{key}", value=value, fix=fix)

    module_name, _, class_name = spec.class_.rpartition(".")
    package = module_name.split(".", 1)[0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if package in _EXTRAS and err.name and err.name.split(".")[0] == package:
            raise ConfigError(
                f"estimator {spec.class_} needs {package}, which is not installed. "
                f"Fix: pip install 'loom[{_EXTRAS[package]}]'"
            ) from None
        raise problem(
            f"cannot import module {module_name!r}",
            fix="use an import path such as sklearn.ensemble.HistGradientBoostingClassifier",
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise problem(f"module {module_name!r} has no {class_name!r}")
    try:
        estimator = cls(**spec.params)
    except TypeError as err:
        raise problem(
            f"{spec.class_} rejects its params: {err}",
            params=True,
            fix=f"use the constructor arguments of {spec.class_}",
        ) from None
    if transformer:
        if not (hasattr(estimator, "fit") and hasattr(estimator, "transform")):
            raise problem(
                f"{spec.class_} has no fit/transform, so it cannot be a preprocessing step",
                fix="use a transformer such as sklearn.impute.SimpleImputer or sklearn.preprocessing.StandardScaler",
            )
        return estimator
    if not hasattr(estimator, "predict_proba"):
        raise problem(
            f"{spec.class_} has no predict_proba; Loom models are probabilistic classifiers",
            fix="use a classifier with predict_proba",
        )
    return estimator


def step_names(steps: list[Step]) -> list[str]:
    """Pipeline names of the preprocessing steps: ``name:``, else the class in snake_case (``simple_imputer``);
    a repeated name gets ``_2``, ``_3``."""
    names: list[str] = []
    for step in steps:
        base = step.name or re.sub(r"(?<!^)(?=[A-Z])", "_", step.class_.rsplit(".", 1)[1]).lower()
        name, n = base, 1
        while name in names or name == ESTIMATOR_STEP:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def build_model(model: Model, name: str, file: str | None = None, *, estimator: Estimator | None = None) -> Any:
    """The model's unfitted predictor: the estimator alone, or a Pipeline of its ``preprocessing`` steps
    then the estimator (step ``estimator``). ``estimator`` overrides the metadata's (tests, experiments)."""
    final = build_estimator(estimator or model.estimator, f"models.{name}.estimator", file)
    if not model.preprocessing:
        return final
    from sklearn.pipeline import Pipeline

    steps = [
        (step_name, build_estimator(step, f"models.{name}.preprocessing[{i}]", file, transformer=True))
        for i, (step_name, step) in enumerate(zip(step_names(model.preprocessing), model.preprocessing, strict=True))
    ]
    return Pipeline([*steps, (ESTIMATOR_STEP, final)])


_NAN = re.compile(r"contains NaN|NaN, infinity|missing values", re.IGNORECASE)
_INFINITY = re.compile(r"infinity|too large", re.IGNORECASE)


def _failed_step(predictor: Any, traceback: types.TracebackType | None) -> tuple[str, Any]:
    """The innermost Pipeline step (name, object) whose method was running when the error was raised."""
    steps = list(getattr(predictor, "steps", [(ESTIMATOR_STEP, predictor)]))
    found = steps[-1]
    while traceback is not None:
        owner = traceback.tb_frame.f_locals.get("self")
        for step in steps:
            if owner is step[1]:
                found = step
        traceback = traceback.tb_next
    return found


def run_estimator(predictor: Any, action: str, call: Callable[..., T], *args: Any, model: str) -> T:
    """``call(*args)`` (a fit or predict of ``predictor``), with the estimator's refusals (ValueError, TypeError)
    turned into one-line :class:`EstimatorError` naming the model, the failing step and the fix."""
    try:
        return call(*args)
    except (ValueError, TypeError) as err:
        step, obj = _failed_step(predictor, err.__traceback__)
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if _NAN.search(detail):
            fix = (
                "add an imputer step under preprocessing: (e.g. {class: sklearn.impute.SimpleImputer, params: "
                "{strategy: median}}), or use an estimator that accepts missing values "
                "(e.g. sklearn.ensemble.HistGradientBoostingClassifier)"
            )
        elif _INFINITY.search(detail):
            fix = "clip or log-transform the feature (on_demand: clip/log), or add a scaler step under preprocessing:"
        else:
            fix = f"check models.{model}.preprocessing and models.{model}.estimator (classes and params)"
        raise EstimatorError(
            f"model {model!r}: step {step!r} ({type(obj).__name__}) failed to {action}: {detail[:300]}. Fix: {fix}"
        ) from None


def fit_estimator(predictor: Any, x: np.ndarray, y: np.ndarray, inputs: Sequence[str], *, model: str) -> None:
    """Fit ``predictor`` on ``x`` (columns named ``inputs``); refusals become :class:`EstimatorError`.

    A feature with no value in any training row is the usual cause of an obscure refusal
    (scikit-learn's HistGradientBoosting cannot bin a column of NaN: "window shape cannot be
    larger than input array shape"), and a sign that its events never reach the labels. When
    the fit fails and such features exist, the error names them instead of the estimator's words.
    """
    try:
        run_estimator(predictor, "fit", predictor.fit, x, y, model=model)
    except EstimatorError as err:
        empty = [name for name, column in zip(inputs, x.T, strict=True) if np.isnan(column).all()]
        if not empty:
            raise
        said = str(err.args[0]).split(": ", 2)[-1].split(". Fix: ")[0]  # the estimator's words, without our fix
        shown = ", ".join(repr(name) for name in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise EstimatorError(
            f"model {model!r}: feature(s) {shown} have no value in any of the {len(x)} training rows, and the fit "
            f"failed on them ({said[:120]}). Fix: check that those features' events "
            f"reach the labels (source, window, entity key), remove them from models.{model}.features, or add an "
            f"imputer step under models.{model}.preprocessing"
        ) from None
