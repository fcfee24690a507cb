"""Train a model of the metadata: point-in-time training set -> holdout split
(common.models.split) -> fit (preprocessing Pipeline + estimator) -> holdout metrics -> MLflow run (params, metrics, plots, lineage, pyfunc
with its feature spec) -> registered version @challenger -> @champion when the
promotion rule passes against the current champion on the same holdout (or
@shadow first, when the model declares a shadow period: common.models.shadow)."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from common.compile.models import ModelPlan
from common.compile.plan import Plan
from common.errors import DataError
from common.models import registry
from common.models.estimators import build_model, fit_estimator, run_estimator, step_names
from common.models.fast_predict import FastPredictor, build_fast_predictor, check_fast_predictor, dumps
from common.models.lineage import code_version, pip_requirements
from common.models.metrics import evaluate, improvement
from common.models.profile import log_training_profile, training_profile
from common.models.pyfunc import ESTIMATOR, FAST_PREDICTOR, FEATURE_SPEC, LoomModel, model_matrix
from common.models.shadow import shadow_until, start_shadow
from common.models.split import Split, split_frame, time_split  # noqa: F401 (time_split: re-exported)
from common.models.training_set import LABEL, TableVersion, TrainingSet, model_training_set
from common.settings import Paths
from common.spec.models import Estimator

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    """What a training run produced and decided."""

    model: str
    run_id: str
    version: int | None
    metrics: dict[str, float]
    decision: str
    promoted: bool
    lineage: dict[str, Any] = field(default_factory=dict)
    champion_metric: float | None = None
    shadow_until: datetime | None = None  # set when the winner went to @shadow first (promotion.shadow)

    def render(self) -> str:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in self.metrics.items())
        version = f"v{self.version}" if self.version is not None else "(not registered)"
        return f"{self.model} {version}, run {self.run_id}\n  holdout: {shown}\n  decision: {self.decision}"


def model_split(frame: pd.DataFrame, model: ModelPlan) -> Split:
    """The model's holdout split (``split:`` of its metadata) of its training set, sorted by (time, key)."""
    return split_frame(
        frame, model.spec.split, time_column=model.label_time, entity_key=model.entity_key, model=model.name
    )


def _one_thread():
    """Scikit-learn's OpenMP pool held to one thread, for the holdout predictions of a training run.

    A HistGradientBoosting ``predict_proba`` opens one OpenMP parallel region per tree; the permutation
    importance alone makes about 12,800 of them on churn's holdout. On a busy machine (2 cores, load 11)
    each region's spin-waiting threads cost about 1 ms: 15 of the 17 s of the permutation importance.
    Each row's score is computed alone, so one thread gives bit-identical scores (and metrics). The fit
    keeps its threads: its parallel sums are not order-free, and the model must stay the same.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def _permutation_importance(estimator: Any, x: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    from sklearn.inspection import permutation_importance

    result = permutation_importance(estimator, x, y, scoring="roc_auc", n_repeats=5, random_state=7, n_jobs=1)
    return {name: float(value) for name, value in zip(names, result.importances_mean, strict=True)}


def _log_plots(labels: np.ndarray, scores: np.ndarray, importances: Mapping[str, float]) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    from common.models import plots

    for file, figure in (
        ("plots/roc_curve.png", plots.roc_curve(labels, scores)),
        ("plots/pr_curve.png", plots.pr_curve(labels, scores)),
        ("plots/calibration.png", plots.calibration(labels, scores)),
        ("plots/feature_importance.png", plots.importances(importances)),
    ):
        mlflow.log_figure(figure, file)
        plt.close(figure)


def _signature(model: ModelPlan):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    key = ColSpec("string", model.entity_key, required=False)
    features = [ColSpec("double", name, required=False) for name in model.feature_spec.lookup_features]
    return ModelSignature(inputs=Schema([key, *features]), outputs=Schema([ColSpec("double")]))


def _log_model(model: ModelPlan, estimator: Any, example: pd.DataFrame, fast: FastPredictor | None = None) -> str:
    """Log the pyfunc (estimator + feature spec + fast predictor, when there is one); returns its model URI."""
    import joblib
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        estimator_path = Path(folder) / "estimator.joblib"
        joblib.dump(estimator, estimator_path)
        spec_path = Path(folder) / "feature_spec.json"
        spec_path.write_text(model.feature_spec.to_json())
        artifacts = {ESTIMATOR: str(estimator_path), FEATURE_SPEC: str(spec_path)}
        if fast is not None:
            fast_path = Path(folder) / "fast_predictor.bin"
            fast_path.write_bytes(dumps(fast))
            artifacts[FAST_PREDICTOR] = str(fast_path)
        package = model.spec.estimator.class_.split(".", 1)[0]
        extra = (package,) if package in ("xgboost", "lightgbm") else ()
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=LoomModel(),
            artifacts=artifacts,
            signature=_signature(model),
            input_example=example,
            pip_requirements=pip_requirements(extra),
            # overridable at load time: load_model(uri, model_config={"redis_url": ...})
            model_config={"redis_url": ""},
        )
    return info.model_uri


def _fast_predictor(estimator: Any, x_holdout: np.ndarray, model_name: str) -> tuple[FastPredictor | None, float]:
    """The estimator's fast predictor, checked on the holdout (ModelError when it disagrees), and its largest gap."""
    fast = build_fast_predictor(estimator)
    if fast is None:
        log.info("model %s: no fast predictor for %s; serving uses the estimator", model_name, type(estimator).__name__)
        return None, 0.0
    gap = check_fast_predictor(fast, estimator, x_holdout, model=model_name)
    log.info("model %s: fast predictor %s agrees with the estimator (largest gap %.2g)", model_name, fast.kind, gap)
    return fast, gap


def _champion_metric(
    client: Any, name: str, metric: str, split: Split, threshold: float
) -> tuple[int | None, float | None, str]:
    """The current champion's ``metric`` on this run's holdout (None when there is no champion)."""
    import mlflow

    version = registry.version_by_alias(name, registry.CHAMPION, client)
    if version is None:
        return None, None, "no champion yet"
    champion = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    spec = champion.unwrap_python_model().feature_spec
    absent = [c for c in spec.lookup_features if c not in split.holdout.columns]
    if absent:
        return version, None, f"champion v{version} reads features this holdout lacks ({absent[:3]})"
    scores = champion.unwrap_python_model().predict_features(split.holdout)
    value = evaluate(split.holdout[LABEL].to_numpy(), scores, [metric], threshold)[metric]
    return version, value, ""


def decide(
    model: ModelPlan, version: int, new_value: float, champion: tuple[int | None, float | None, str]
) -> tuple[bool, str]:
    """Apply the promotion rule; returns (promote, why)."""
    rule = model.spec.promotion
    champion_version, champion_value, note = champion
    if champion_version is None:
        return True, f"no champion yet: v{version} becomes @champion"
    if champion_value is None:
        return False, f"{note}; @champion stays on v{champion_version}"
    gain = improvement(rule.metric, new_value, champion_value)
    verdict = (
        f"{rule.metric} {new_value:.4f} vs champion v{champion_version} {champion_value:.4f} on the same holdout: "
        f"{gain:+.4f} (needs >= {rule.min_improvement:+.4f})"
    )
    if gain >= rule.min_improvement:
        return True, f"{verdict}; v{version} becomes @champion"
    return False, f"{verdict}; v{version} stays @challenger, @champion stays on v{champion_version}"


@dataclass
class FittedModel:
    """The fit step's result: the estimator, its holdout evidence and the lineage of its training set."""

    model: ModelPlan
    estimator_spec: Estimator  # the metadata's, with the run's parameter overrides
    estimator: Any
    training: TrainingSet  # the point-in-time training set (tables read, their versions)
    frame: pd.DataFrame
    split: Split
    y_train: np.ndarray
    y_test: np.ndarray
    scores: np.ndarray  # holdout scores
    fast: FastPredictor | None
    fast_gap: float
    metrics: dict[str, float]
    importances: dict[str, float]
    lineage: dict[str, Any]


def fit_model(
    spark: SparkSession,
    plan: Plan,
    model_name: str,
    work: Paths,
    *,
    versions: Mapping[str, TableVersion | int] | None = None,
    estimator_params: Mapping[str, Any] | None = None,
) -> FittedModel:
    """Build the training set, split it, fit the estimator and measure it on the holdout (no MLflow)."""
    model = plan.model(model_name)
    spec = model.spec
    training = model_training_set(spark, plan, model, work, versions=versions)
    frame = training.frame.toPandas()
    if frame.empty:
        raise DataError(
            f"model {model_name!r} has no labels in source {model.label_source!r}. "
            f"Fix: ingest labels (`loom ingest --usecase {plan.usecase}`)"
        )
    frame = frame.sort_values([model.label_time, model.entity_key], kind="stable").reset_index(drop=True)
    split = model_split(frame, model)
    estimator_spec = spec.estimator
    if estimator_params:
        estimator_spec = estimator_spec.model_copy(update={"params": {**estimator_spec.params, **estimator_params}})
    estimator = build_model(spec, model_name, plan.spec.file_of("models", model_name), estimator=estimator_spec)
    x_train = model_matrix(model.feature_spec, split.train)
    x_test = model_matrix(model.feature_spec, split.holdout)
    y_train, y_test = split.train[LABEL].to_numpy(), split.holdout[LABEL].to_numpy()
    fit_estimator(estimator, x_train, y_train, model.inputs, model=model_name)
    with _one_thread():
        scores = run_estimator(estimator, "predict", estimator.predict_proba, x_test, model=model_name)[:, 1]
        fast, fast_gap = _fast_predictor(estimator, x_test, model_name)
        importances = _permutation_importance(estimator, x_test, y_test, model.inputs)
    names = list(dict.fromkeys([*spec.metrics, spec.promotion.metric]))
    metrics = evaluate(y_test, scores, names, spec.threshold)
    lineage = {
        "tables": training.lineage(),
        "metadata_hash": model.metadata_hash,
        "code_version": code_version(),
        "usecase": plan.usecase,
        "usecase_version": plan.version,
        "model": model_name,
    }
    return FittedModel(
        model=model,
        estimator_spec=estimator_spec,
        estimator=estimator,
        training=training,
        frame=frame,
        split=split,
        y_train=y_train,
        y_test=y_test,
        scores=scores,
        fast=fast,
        fast_gap=fast_gap,
        metrics=metrics,
        importances=importances,
        lineage=lineage,
    )


def _run_params(fitted: FittedModel) -> dict[str, Any]:
    """The MLflow params of a training run: estimator, split, preprocessing, promotion and table versions."""
    spec, split, estimator_spec, fast = fitted.model.spec, fitted.split, fitted.estimator_spec, fitted.fast
    params: dict[str, Any] = {
        "estimator": estimator_spec.class_,
        "split.kind": spec.split.kind,
        "split.holdout": spec.split.holdout if spec.split.kind != "column" else spec.split.column,
        "split.cutoff": split.cutoff.isoformat() if split.cutoff is not None else "none",
        "rows.train": len(split.train),
        "rows.holdout": len(split.holdout),
        "label.rate.train": round(float(fitted.y_train.mean()), 4),
        "features": len(fitted.model.inputs),
        "fast_predictor": fast.kind if fast is not None else "none",
        "threshold": spec.threshold,
        "promotion.metric": spec.promotion.metric,
        "promotion.min_improvement": spec.promotion.min_improvement,
    }
    params.update({f"estimator.{k}": v for k, v in estimator_spec.params.items()})
    if spec.split.kind in ("random", "entity"):
        params["split.seed"] = spec.split.random_seed
    if spec.preprocessing:
        names = step_names(spec.preprocessing)
        params["preprocessing"] = ",".join(names)
        for step_name, step in zip(names, spec.preprocessing, strict=True):
            params[f"preprocessing.{step_name}"] = step.class_
            params.update({f"preprocessing.{step_name}.{k}": v for k, v in step.params.items()})
    params.update({f"delta.{name}.version": v.version for name, v in fitted.training.versions.items()})
    return params


def log_run(fitted: FittedModel, plan: Plan, work: Paths) -> tuple[str, str]:
    """Log the fitted model's MLflow run (tags, params, metrics, lineage, profile, plots, pyfunc).

    Returns the run id and the logged model's URI.
    """
    import mlflow

    from common.runtime.tracking import experiment

    model, lineage = fitted.model, fitted.lineage
    experiment_id = experiment(f"loom-{plan.usecase}", work)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{model.name}") as run:
        mlflow.set_tags(
            {
                "loom.usecase": plan.usecase,
                "loom.model": model.name,
                "loom.metadata_hash": model.metadata_hash,
                "loom.code_version": lineage["code_version"],
                "mlflow.source.git.commit": lineage["code_version"].split("+")[0],
            }
        )
        mlflow.log_params(_run_params(fitted))
        mlflow.log_metrics({f"holdout_{k}": v for k, v in fitted.metrics.items() if v == v})
        if fitted.fast is not None:
            mlflow.log_metric("fast_predictor_max_abs_diff", fitted.fast_gap)
        mlflow.log_dict(lineage, "lineage.json")
        mlflow.log_dict(fitted.importances, "feature_importance.json")
        log_training_profile(training_profile(fitted.frame, model.feature_spec.lookup_features, fitted.scores))
        mlflow.log_text(model.feature_spec.to_json(), "feature_spec.json")
        _log_plots(fitted.y_test, fitted.scores, fitted.importances)
        example = fitted.split.holdout[[model.entity_key, *model.feature_spec.lookup_features]].head(3)
        model_uri = _log_model(model, fitted.estimator, example, fitted.fast)
    return run.info.run_id, model_uri


def register_version(fitted: FittedModel, model_uri: str, work: Paths, outcome: TrainOutcome) -> TrainOutcome:
    """Register the logged model as @challenger, then apply the promotion rule (or start a shadow period).

    Fills ``outcome`` (version, champion metric, decision) and returns it.
    """
    import mlflow

    model = fitted.model
    model_name, spec = model.name, model.spec
    client = registry.client(work)
    registered = mlflow.register_model(model_uri, model_name, tags={"loom.metadata_hash": model.metadata_hash})
    version = int(registered.version)
    outcome.version = version
    registry.set_challenger(model_name, version, client)
    metric = spec.promotion.metric
    champion = _champion_metric(client, model_name, metric, fitted.split, spec.threshold)
    outcome.champion_metric = champion[1]
    promoted, why = decide(model, version, fitted.metrics[metric], champion)
    if promoted and champion[0] is not None and spec.promotion.shadow:
        outcome.shadow_until = shadow_until(spec.promotion.shadow)
        start_shadow(model_name, version, outcome.shadow_until, client)
        promoted = False
        why = (
            f"{why.rsplit('; ', 1)[0]}; v{version} is @shadow until {outcome.shadow_until:%Y-%m-%d %H:%M} UTC "
            f"(streams score it beside champion v{champion[0]}; `loom retrain` promotes it after)"
        )
    elif promoted:
        registry.promote(model_name, version, why, client)
    client.set_model_version_tag(model_name, str(version), "loom.decision", why)
    outcome.decision, outcome.promoted = why, promoted
    log.info("model %s v%d: %s", model_name, version, why)
    return outcome


def train_model(
    spark: SparkSession,
    plan: Plan,
    model_name: str,
    work: Paths,
    *,
    versions: Mapping[str, TableVersion | int] | None = None,
    register: bool = True,
    estimator_params: Mapping[str, Any] | None = None,
) -> TrainOutcome:
    """Train, log, register and (by the promotion rule) promote ``model_name``.

    ``versions`` pins the Delta tables read (as logged by an earlier run);
    ``estimator_params`` override the metadata's params (experiments, tests).
    """
    fitted = fit_model(spark, plan, model_name, work, versions=versions, estimator_params=estimator_params)
    run_id, model_uri = log_run(fitted, plan, work)
    outcome = TrainOutcome(model_name, run_id, None, fitted.metrics, "not registered", False, fitted.lineage)
    if not register:
        return outcome
    return register_version(fitted, model_uri, work, outcome)


def lineage_versions(lineage: Mapping[str, Any]) -> dict[str, TableVersion]:
    """Table versions from a run's ``lineage.json``, to rebuild its training set exactly."""
    return {name: TableVersion(v["path"], int(v["version"])) for name, v in lineage["tables"].items()}


def load_lineage(run_id: str) -> dict[str, Any]:
    """The ``lineage.json`` a training run logged."""
    import mlflow

    return json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="lineage.json")).read_text()
    )
