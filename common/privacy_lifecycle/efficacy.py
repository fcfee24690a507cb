"""``loom privacy-report``: what the privacy policies cost a model, measured.

The model is fitted twice on the same point-in-time training set, the same
time split and the same estimator (the normal training path's functions):

* **protected**: the model's features, plus one feature per generalized or
  k-anonymous PII column of its entity's table sources, as bronze holds it
  (zip prefix, year of birth, published aggregate value);
* **raw** (the sandbox): the same, but those columns taken from the raw
  landing records (full zip, exact date of birth), as a model developer with
  access to the raw data would use them.

Both see each person's row as of the label time (the newest version at or
before it). Pseudonymized and encrypted columns are left out of both: a token
carries exactly the equality information of its value, nothing a model can
use beyond an identifier. Dropped columns have no protected counterpart.

The raw rows are read from the landing files into memory (Spark and the
driver); nothing raw is written to the lake, logged, or logged to MLflow, and
the raw model is never logged or registered. One MLflow run in the use case's
experiment, tagged ``loom.sandbox=true``, records both metrics and their
difference (``diff_<metric>`` = protected - raw), the columns compared (names
only) and the row counts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from common.compile.plan import Plan
from common.errors import ConfigError
from common.lake.delta import read_bronze
from common.models.estimators import build_model, run_estimator
from common.models.metrics import METRICS, evaluate, improvement
from common.models.pyfunc import model_matrix
from common.models.train import model_split
from common.models.training_set import LABEL, model_training_set
from common.privacy_lifecycle.landing import entity_key, landing_folder_of, read_raw_typed
from common.settings import Paths
from common.spec.privacy import Aggregate, Generalize

log = logging.getLogger("loom.privacy.efficacy")

PREFIX = "pii__"


@dataclass(frozen=True)
class PiiFeature:
    """One PII column compared in both forms."""

    source: str
    column: str
    policy: str  # e.g. generalize/prefix, aggregate/k=10

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.column}"


@dataclass
class PrivacyReport:
    """Both fits' holdout metrics and their difference."""

    usecase: str
    model: str
    metric: str
    columns: list[PiiFeature]
    rows_train: int
    rows_holdout: int
    raw: dict[str, float] = field(default_factory=dict)
    protected: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def diff(self) -> dict[str, float]:
        """protected - raw, per metric."""
        return {name: self.protected[name] - self.raw[name] for name in self.raw}

    @property
    def cost(self) -> float:
        """How much worse the protected model is on the promotion metric (negative: better)."""
        return -improvement(self.metric, self.protected[self.metric], self.raw[self.metric])

    def as_dict(self) -> dict[str, Any]:
        return {
            "usecase": self.usecase,
            "model": self.model,
            "metric": self.metric,
            "columns": [f"{c.source}.{c.column} ({c.policy})" for c in self.columns],
            "rows": {"train": self.rows_train, "holdout": self.rows_holdout},
            "raw": self.raw,
            "protected": self.protected,
            "diff": self.diff,
        }

    def render(self) -> str:
        lines = [
            f"privacy-report {self.usecase} / {self.model}: "
            f"{self.rows_train} training and {self.rows_holdout} holdout labels, the same split for both fits",
            "  PII columns compared: " + ", ".join(f"{c.source}.{c.column} ({c.policy})" for c in self.columns),
            f"  {'metric':<12}{'raw (sandbox)':>15}{'protected':>12}{'diff':>10}",
        ]
        for name in self.raw:
            lines.append(f"  {name:<12}{self.raw[name]:>15.4f}{self.protected[name]:>12.4f}{self.diff[name]:>+10.4f}")
        lines.append(f"  cost of protection on {self.metric}: {self.cost:+.4f}")
        if self.run_id:
            lines.append(f"  MLflow run {self.run_id} (tag loom.sandbox=true; nothing registered)")
        return "\n".join(lines)


def compared_columns(plan: Plan, model_name: str) -> list[PiiFeature]:
    """Generalized and k-anonymous PII columns of the table sources of the model's entity."""
    model = plan.model(model_name)
    spec = plan.spec
    found = []
    for source_name, source in spec.sources.items():
        if source.kind != "table" or entity_key(spec, source) != model.entity_key:
            continue
        for column_name, column in source.columns.items():
            policy = column.policy
            if isinstance(policy, Generalize):
                found.append(PiiFeature(source_name, column_name, f"generalize/{policy.rule}"))
            elif isinstance(policy, Aggregate):
                found.append(PiiFeature(source_name, column_name, f"aggregate/k={policy.k}"))
    if not found:
        raise ConfigError(
            f"model {model_name!r}: no table source of its entity has a generalized or aggregated PII column, so "
            "there is nothing to compare. Fix: the report measures generalize and aggregate policies; "
            "drop, pseudonymize and encrypt leave no usable feature in either form"
        )
    return found


def _as_of(labels: pd.DataFrame, rows: pd.DataFrame, key: str, label_time: str, event_time: str | None) -> pd.DataFrame:
    """For each label row, the columns of ``rows`` of its entity as of the label time (newest at or before it)."""
    if event_time is None:
        latest = rows.drop_duplicates(key, keep="last")
        return labels[[key]].merge(latest, on=key, how="left")
    left = labels[[key, label_time]].reset_index().sort_values(label_time, kind="stable")
    right = rows.dropna(subset=[event_time]).sort_values(event_time, kind="stable")
    left[label_time] = pd.to_datetime(left[label_time]).astype("datetime64[ns]")
    right[event_time] = pd.to_datetime(right[event_time]).astype("datetime64[ns]")
    joined = pd.merge_asof(left, right, left_on=label_time, right_on=event_time, by=key, direction="backward")
    return joined.set_index("index").sort_index()


def encode(values: pd.Series, feature: PiiFeature, label_times: pd.Series) -> np.ndarray:
    """A PII column as a number, the same way for its raw and its protected form.

    Strings (zip, prefix, aggregate value): their rank among the distinct values
    (lexicographic, so equal-length numbers keep their order); dates: the age in
    years at the label time; numbers: as they are.
    """
    if feature.policy == "generalize/year":
        dates = pd.to_datetime(values, errors="coerce").astype("datetime64[ns]")
        times = pd.to_datetime(label_times).astype("datetime64[ns]")
        return ((times - dates).dt.days / 365.25).to_numpy(dtype="float64", na_value=np.nan)
    if feature.policy == "generalize/bucket":
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    text = values.astype("string")
    categories = sorted(text.dropna().unique())
    codes = pd.Categorical(text, categories=categories).codes.astype("float64")
    codes[codes < 0] = np.nan
    return codes


def privacy_report(
    spark: SparkSession,
    plan: Plan,
    model_name: str,
    work: Paths,
    *,
    landing: Path | str | None = None,
    log_to_mlflow: bool = True,
) -> PrivacyReport:
    """Fit the model on raw and on protected PII features and compare; see the module docstring."""
    model = plan.model(model_name)
    spec = plan.spec
    columns = compared_columns(plan, model_name)
    training = model_training_set(spark, plan, model, work)
    frame = training.frame.toPandas()
    frame = frame.sort_values([model.label_time, model.entity_key], kind="stable").reset_index(drop=True)
    key = model.entity_key

    by_source: dict[str, list[PiiFeature]] = {}
    for feature in columns:
        by_source.setdefault(feature.source, []).append(feature)
    extras: dict[str, dict[str, np.ndarray]] = {"raw": {}, "protected": {}}
    for source_name, features in by_source.items():
        source = spec.sources[source_name]
        names = [f.column for f in features]
        event = [source.event_time] if source.event_time else []
        wanted = [entity_key(spec, source), *event, *names]
        raw = read_raw_typed(spark, spec, source_name, landing_folder_of(spec, source_name, work, landing))
        protected = read_bronze(spark, work, spec.name, source_name)
        for variant, rows in (("raw", raw), ("protected", protected)):
            table = rows.select(*[F.col(c) for c in wanted]).withColumnRenamed(entity_key(spec, source), key)
            current = _as_of(frame, table.toPandas(), key, model.label_time, source.event_time)
            for feature in features:
                extras[variant][feature.name] = encode(current[feature.column], feature, frame[model.label_time])

    # the model's own split; its row positions pick the same rows of `extras` (row for row with frame)
    split = model_split(frame, model)
    train_rows, holdout_rows = split.train_rows, split.holdout_rows
    names = list(dict.fromkeys([*model.spec.metrics, model.spec.promotion.metric]))
    names = [n for n in names if n in METRICS]
    report = PrivacyReport(
        spec.name, model_name, model.spec.promotion.metric, columns, len(split.train), len(split.holdout)
    )
    base_train = model_matrix(model.feature_spec, split.train)
    base_test = model_matrix(model.feature_spec, split.holdout)
    y_train, y_test = split.train[LABEL].to_numpy(), split.holdout[LABEL].to_numpy()
    for variant in ("raw", "protected"):
        added = np.column_stack([extras[variant][f.name] for f in columns])
        x_train = np.hstack([base_train, added[train_rows]])
        x_test = np.hstack([base_test, added[holdout_rows]])
        estimator = build_model(model.spec, model_name, spec.file_of("models", model_name))
        run_estimator(estimator, "fit", estimator.fit, x_train, y_train, model=model_name)
        scores = run_estimator(estimator, "predict", estimator.predict_proba, x_test, model=model_name)[:, 1]
        setattr(report, variant, evaluate(y_test, scores, names, model.spec.threshold))
    if log_to_mlflow:
        report.run_id = _log(report, plan, work, split.cutoff.isoformat() if split.cutoff is not None else "none")
    log.info("privacy report %s/%s: cost on %s %+.4f", spec.name, model_name, report.metric, report.cost)
    return report


def _log(report: PrivacyReport, plan: Plan, work: Paths, cutoff: str) -> str:
    import mlflow

    from common.runtime.tracking import experiment

    experiment_id = experiment(f"loom-{plan.usecase}", work)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"privacy-report-{report.model}") as run:
        mlflow.set_tags(
            {
                "loom.usecase": plan.usecase,
                "loom.model": report.model,
                "loom.kind": "privacy-report",
                "loom.sandbox": "true",
                "loom.registered": "false",
            }
        )
        mlflow.log_params(
            {
                "pii.columns": ", ".join(f"{c.source}.{c.column}" for c in report.columns),
                "pii.policies": ", ".join(c.policy for c in report.columns),
                "rows.train": report.rows_train,
                "rows.holdout": report.rows_holdout,
                "split.cutoff": cutoff,
                "estimator": plan.model(report.model).spec.estimator.class_,
                "metric": report.metric,
            }
        )
        metrics = {f"raw_{k}": v for k, v in report.raw.items()}
        metrics |= {f"protected_{k}": v for k, v in report.protected.items()}
        metrics |= {f"diff_{k}": v for k, v in report.diff.items()}
        mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})
        mlflow.log_text(json.dumps(report.as_dict(), indent=2), "privacy_report.json")
    return run.info.run_id
