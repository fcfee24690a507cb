"""Estimators by import path, e.g. ``sklearn.ensemble.HistGradientBoostingClassifier``."""

from __future__ import annotations

import importlib
from typing import Any

from common.errors import ConfigError, SpecError
from common.spec.models import Estimator

# top-level package -> the pip extra that installs it
_EXTRAS = {"xgboost": "xgboost", "lightgbm": "lightgbm"}


def build_estimator(spec: Estimator, where: str, file: str | None = None) -> Any:
    """A new, unfitted estimator; errors name the YAML path, the class and the fix."""

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
    if not hasattr(estimator, "predict_proba"):
        raise problem(
            f"{spec.class_} has no predict_proba; Loom models are probabilistic classifiers",
            fix="use a classifier with predict_proba",
        )
    return estimator
