"""Runtime evaluation: logged predictions (batch, stream, REST) against the outcomes that
arrived since, per model version, prediction path and time bucket.

1. read every prediction table that exists (``common.monitoring.sources``);
2. match each prediction with its entity's first outcome in ``[p, p + label_delay]``
   (``common.monitoring.matching``; unmatched predictions are counted, not evaluated);
3. cut prediction time into buckets of ``evaluation.bucket`` aligned to the Unix
   epoch (UTC) and compute, per model version, path and bucket, and for the
   paths together (``path = "all"``), the metrics of ``common.monitoring.metrics``;
4. replace the model's rows of ``lake/<usecase>/monitoring/metrics`` in one
   Delta commit (a full recompute: re-running gives the same table);
5. log every bucket's metrics on the version's MLflow run as ``eval_<path>_<metric>``
   with step = bucket index (bucket start / bucket length), timestamp = bucket
   start, plus ``monitoring/evaluation.png`` and ``monitoring/evaluation.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from common.compile.plan import Plan
from common.errors import DataError
from common.lake.delta import replace_rows
from common.lake.paths import monitoring_path
from common.monitoring.matching import MATCHED, STATUS, labels_through, match_outcomes
from common.monitoring.metrics import (
    COUNT_COLUMNS,
    ECE_BINS,
    LOGGED_METRICS,
    METRIC_COLUMNS,
    PREDICTION_COUNTS,
    bucket_metrics,
)
from common.monitoring.settings import MonitoringSettings, settings_of
from common.monitoring.sources import LABEL, PATHS, PREDICTION_TS, Predictions, read_outcomes, read_predictions
from common.monitoring.tables import METRICS, sql_string
from common.settings import Paths

log = logging.getLogger("loom.monitoring")

ALL_PATHS = "all"
BUCKET = "bucket"
GROUP: tuple[str, ...] = ("model_name", "model_version", "path", BUCKET)

_SCHEMA = T.StructType(
    [
        T.StructField("model_name", T.StringType()),
        T.StructField("model_version", T.IntegerType()),
        T.StructField("path", T.StringType()),
        T.StructField(BUCKET, T.LongType()),
        *[T.StructField(name, T.LongType() if name in COUNT_COLUMNS else T.DoubleType()) for name in METRIC_COLUMNS],
    ]
)


@dataclass
class EvaluationResult:
    """What one evaluation computed and where it went."""

    model: str
    table: str
    rows: pd.DataFrame
    found: dict[str, str]
    missing: list[str]
    labels_through: datetime | None
    logged: dict[int, int] = field(default_factory=dict)  # version -> metric points logged to MLflow

    def totals(self, version: int | None = None) -> dict[str, int]:
        """Prediction counts over every bucket of path ``all`` (of one version, or all versions)."""
        every = self.rows[self.rows["path"] == ALL_PATHS]
        if version is not None:
            every = every[every["model_version"] == version]
        return {name: int(every[name].sum()) for name in PREDICTION_COUNTS}

    def render(self) -> str:
        through = self.labels_through.isoformat() if self.labels_through else "no outcomes yet"
        lines = [
            f"evaluated model {self.model}: predictions from {sorted(self.found) or 'no table'}"
            + (f" (no table yet: {self.missing})" if self.missing else ""),
            f"  outcomes through {through}; " + ", ".join(f"{k} {v}" for k, v in self.totals().items()),
        ]
        every = self.rows[self.rows["path"] == ALL_PATHS].sort_values(["model_version", "bucket_start"])
        for row in every.itertuples():
            lines.append(
                f"  v{row.model_version} {pd.Timestamp(row.bucket_start):%Y-%m-%d %H:%M}: "
                f"{row.volume} predictions, {row.matched} matched, roc_auc {_fmt(row.roc_auc)}, "
                f"precision {_fmt(row.precision)}, recall {_fmt(row.recall)}, "
                f"mean score {_fmt(row.mean_score)} vs rate {_fmt(row.observed_rate)}, ece {_fmt(row.ece)}"
            )
        lines.append(f"  -> {self.table}")
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.3f}"


def _metrics_of_group(threshold: float):
    def compute(keys: tuple, rows: pd.DataFrame) -> pd.DataFrame:
        values = bucket_metrics(rows, threshold)
        return pd.DataFrame([{**dict(zip(GROUP, keys, strict=True)), **values}])[_SCHEMA.fieldNames()]

    return compute


def bucketed(matched: DataFrame, bucket_s: int) -> DataFrame:
    """Matched rows plus ``bucket`` (the bucket index: prediction time // bucket length), each row
    once for its own path and once for ``all``."""
    return matched.withColumns(
        {
            BUCKET: F.floor(F.unix_seconds(F.col(PREDICTION_TS)) / F.lit(bucket_s)).cast("long"),
            "path": F.explode(F.array(F.col("path"), F.lit(ALL_PATHS))),
        }
    )


def compute_metrics(rows: DataFrame, threshold: float, bucket_s: int) -> DataFrame:
    """One row per model version, path and bucket with :data:`METRIC_COLUMNS` (undefined metrics null)."""
    grouped = rows.select(*GROUP, "score", LABEL, STATUS).groupBy(*GROUP)
    metrics = grouped.applyInPandas(_metrics_of_group(threshold), _SCHEMA)
    doubles = [n for n in METRIC_COLUMNS if n not in COUNT_COLUMNS]
    return metrics.withColumns(
        {
            **{n: F.when(~F.isnan(F.col(n)), F.col(n)) for n in doubles},  # NaN -> null: undefined, not a value
            "bucket_start": F.timestamp_seconds(F.col(BUCKET) * F.lit(bucket_s)),
            "bucket_end": F.timestamp_seconds((F.col(BUCKET) + 1) * F.lit(bucket_s)),
        }
    )


def evaluate_model(
    spark: SparkSession,
    plan: Plan,
    model_name: str,
    work: Paths,
    *,
    settings: MonitoringSettings | None = None,
    through: datetime | None = None,
    log_to_mlflow: bool = True,
    paths: tuple[str, ...] = PATHS,
) -> EvaluationResult:
    """Evaluate ``model_name``'s logged predictions against the outcomes that have arrived.

    ``settings`` default to the model's metadata; ``through`` is when the outcome
    windows are known to be complete (default: the newest label time seen).
    """
    model = plan.model(model_name)
    settings = settings or settings_of(model.spec)
    key = model.entity_key
    predictions = read_predictions(spark, work, plan.usecase, model_name, key, paths)
    if predictions.frame is None:
        raise DataError(
            f"no prediction table of use case {plan.usecase!r} exists ({', '.join(paths)}). "
            f"Fix: score first (`loom score --usecase {plan.usecase} --model {model_name}@champion --at now`, "
            "`loom stream`, or the REST service)"
        )
    outcomes = read_outcomes(spark, work, plan.usecase, model, plan.spec.sources.get(model.label_source))
    through = through or labels_through(outcomes)
    # read twice (metrics, reliability diagram): match once
    matched = match_outcomes(predictions.frame, outcomes, key, settings.label_delay_s, through).persist()
    try:
        return _evaluate_matched(spark, plan, model_name, work, settings, matched, predictions, through, log_to_mlflow)
    finally:
        matched.unpersist()


def _evaluate_matched(
    spark: SparkSession,
    plan: Plan,
    model_name: str,
    work: Paths,
    settings: MonitoringSettings,
    matched: DataFrame,
    predictions: Predictions,
    through: datetime | None,
    log_to_mlflow: bool,
) -> EvaluationResult:
    evaluated_at = datetime.now(UTC)
    metrics = compute_metrics(bucketed(matched, settings.bucket_s), settings.threshold, settings.bucket_s)
    metrics = metrics.withColumns(
        {
            "threshold": F.lit(settings.threshold).cast("double"),
            "label_delay_s": F.lit(settings.label_delay_s).cast("long"),
            "bucket_s": F.lit(settings.bucket_s).cast("long"),
            "labels_through": F.lit(through).cast("timestamp"),
            "evaluated_at": F.lit(evaluated_at).cast("timestamp"),
        }
    )
    table = monitoring_path(work, plan.usecase, METRICS)
    replace_rows(spark, metrics, table, f"model_name = {sql_string(model_name)}")
    rows = (
        spark.read.format("delta")
        .load(table)
        .where(F.col("model_name") == model_name)
        .orderBy("model_version", "path", BUCKET)
        .toPandas()
    )
    result = EvaluationResult(model_name, table, rows, predictions.found, predictions.missing, through)
    if log_to_mlflow and not rows.empty:
        calibration = _calibration_by_version(matched)
        result.logged = log_evaluation(work, model_name, rows, calibration)
    return result


def _calibration_by_version(matched: DataFrame) -> pd.DataFrame:
    """Reliability-diagram points per version: equal-width score bins of matched predictions."""
    bin_index = F.least(F.floor(F.col("score") * ECE_BINS), F.lit(ECE_BINS - 1))
    return (
        matched.where(F.col(STATUS) == MATCHED)
        .groupBy("model_version", bin_index.alias("bin"))
        .agg(F.count("*").alias("count"), F.avg("score").alias("mean_score"), F.avg(LABEL).alias("rate"))
        .orderBy("model_version", "bin")
        .toPandas()
    )


def log_evaluation(work: Paths, model_name: str, rows: pd.DataFrame, calibration: pd.DataFrame) -> dict[int, int]:
    """Log each version's bucket metrics, plot and table on the version's run; returns points logged per version."""
    from common.monitoring import plots
    from common.monitoring.tracking import (
        Point,
        json_records,
        log_figure,
        log_points,
        monitoring_client,
        version_run_id,
    )

    client = monitoring_client(work)
    logged: dict[int, int] = {}
    for version, part in rows.groupby("model_version"):
        version = int(version)
        run_id = version_run_id(client, model_name, version)
        if run_id is None:
            log.warning("model %s v%d is not in the registry: its metrics stay in Delta only", model_name, version)
            continue
        points = [
            Point(
                f"eval_{row['path']}_{metric}",
                float(row[metric]),
                int(row[BUCKET]),
                int(row[BUCKET] * row["bucket_s"] * 1000),
            )
            for _, row in part.iterrows()
            for metric in LOGGED_METRICS
            if row[metric] is not None and not pd.isna(row[metric])
        ]
        logged[version] = log_points(client, run_id, points)
        figure = plots.evaluation(
            part,
            calibration[calibration["model_version"] == version],
            f"{model_name} v{version}: runtime evaluation",
        )
        log_figure(client, run_id, figure, "monitoring/evaluation.png")
        client.log_dict(run_id, json_records(part), "monitoring/evaluation.json")
    return logged
