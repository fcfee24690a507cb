"""Drift: the training set's distribution (the profile logged with the model version)
against what the model sees online now.

* **Features.** For each feature group the version reads, the values the
  online store served during ``(at - window, at]``, from the feature history:
  each row counts with the time it was the entity's current value inside the
  window (until the entity's next row, the window's end or the group's ``ttl``).
  That is the distribution of the value a lookup at a random time of the window
  returns — what the training set holds, whose labels are at arbitrary times.
  Counting rows instead would over-weight busy entities, and a snapshot at
  ``at`` alone would skew time-of-day features. At most ``MAX_ROWS`` history
  rows are read (a seeded sample beyond).
* **Score.** The version's scores logged by every prediction path with a
  prediction time in ``(at - window, at]``, against its holdout scores.

Each gets a PSI and (numeric) a KS statistic (``common.models.profile``); it
has drifted when ``psi >= drift.psi`` or ``ks >= drift.ks``. Results replace
the rows of the same model, version and ``window_end`` in
``lake/<usecase>/monitoring/drift``, and go to the version's MLflow run as
``drift_psi_<feature>`` / ``drift_ks_<feature>`` (step = ``window_end`` in Unix
seconds) with ``monitoring/drift.png`` and ``monitoring/drift.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from common.compile.feature_spec import FeatureSpec
from common.compile.plan import FEATURE_TS, Plan
from common.errors import ConfigError, DataError
from common.features.offline import PARTITION, latest_rows, load_history
from common.lake.delta import replace_rows, table_exists
from common.lake.paths import history_path, monitoring_path
from common.models import registry
from common.models.profile import compare, load_training_profile
from common.monitoring.settings import MonitoringSettings, settings_of
from common.monitoring.sources import PATHS, PREDICTION_TS, read_predictions
from common.monitoring.tables import DRIFT, sql_string
from common.settings import Paths

MAX_ROWS = 100_000
SCORE = "score"
WEIGHT = "_weight"
_SAMPLE_SEED = 7

_COLUMNS = (
    "model_name string, model_version int, kind string, feature string, psi double, ks double, "
    "psi_threshold double, ks_threshold double, drifted boolean, rows long, recent_missing double, "
    "reference_rows long, window_start timestamp, window_end timestamp, computed_at timestamp"
)


@dataclass
class DriftResult:
    """The drift of one model version at one time."""

    model: str
    version: int
    window_start: datetime
    window_end: datetime
    rows: pd.DataFrame
    table: str

    @property
    def drifted(self) -> list[str]:
        """Features (and ``score``) over a threshold."""
        return self.rows.loc[self.rows["drifted"], "feature"].tolist()

    def render(self) -> str:
        lines = [
            f"drift of {self.model} v{self.version}, window {self.window_start:%Y-%m-%d %H:%M} .. "
            f"{self.window_end:%Y-%m-%d %H:%M} UTC: "
            + (f"{len(self.drifted)} drifted: {self.drifted}" if self.drifted else "nothing over the thresholds")
        ]
        for row in self.rows.sort_values("psi", ascending=False, na_position="last").itertuples():
            ks = "n/a" if row.ks is None or pd.isna(row.ks) else f"{row.ks:.3f}"
            psi = "n/a (no recent data)" if row.psi is None or pd.isna(row.psi) else f"{row.psi:.3f}"
            flag = "  DRIFT" if row.drifted else ""
            lines.append(f"  {row.kind:<8}{row.feature:<26} psi {psi:<8} ks {ks:<6} rows {row.rows}{flag}")
        lines.append(f"  -> {self.table}")
        return "\n".join(lines)


def _sample(frame: DataFrame, count: int) -> DataFrame:
    return frame if count <= MAX_ROWS else frame.sample(fraction=MAX_ROWS / count, seed=_SAMPLE_SEED)


def recent_features(
    spark: SparkSession, plan: Plan, spec: FeatureSpec, work: Paths, start: datetime, end: datetime
) -> dict[str, pd.DataFrame]:
    """Per group: the values the online store served in ``(start, end]``, with ``_weight`` = seconds served.

    A history row is an entity's value from its ``feature_ts`` until the entity's next row, the end of
    the window, or the group's ``ttl`` (after which a lookup finds nothing: that time is not counted),
    whichever comes first; the row current at ``start`` counts from ``start``.
    """
    out: dict[str, pd.DataFrame] = {}
    for group in spec.groups:
        group_plan = plan.group(group.name)
        path = history_path(work, group_plan)
        if not table_exists(spark, path):
            raise DataError(
                f"no feature history for group {group.name!r} at {path}. Fix: run `loom backfill --usecase "
                f"{plan.usecase}` or `loom stream`"
            )
        key, ttl = group_plan.entity_key, group_plan.ttl_s
        history = load_history(spark, path).where(
            (F.col(PARTITION) <= F.lit(end.date())) & (F.col(FEATURE_TS) <= F.lit(end))
        )
        if ttl is not None:  # older rows expired before the window started
            since = start - timedelta(seconds=ttl)
            history = history.where((F.col(PARTITION) >= F.lit(since.date())) & (F.col(FEATURE_TS) > F.lit(since)))
        history = latest_rows(history, group_plan)  # a key written twice: the latest write is what was served
        following = F.lead(FEATURE_TS).over(Window.partitionBy(key).orderBy(FEATURE_TS))
        served_until = F.least(F.coalesce(following, F.lit(end)), F.lit(end).cast("timestamp"))
        if ttl is not None:
            served_until = F.least(served_until, F.col(FEATURE_TS) + F.make_dt_interval(secs=F.lit(ttl)))
        served_from = F.greatest(F.col(FEATURE_TS), F.lit(start).cast("timestamp"))
        weight = (F.unix_micros(served_until) - F.unix_micros(served_from)) / F.lit(1_000_000.0)
        served = (
            history.select(F.col(key), F.col(FEATURE_TS), *[F.col(n).cast("double").alias(n) for n in group.selected])
            .withColumn(WEIGHT, weight)
            .where(F.col(WEIGHT) > 0)
            .select(*group.selected, WEIGHT)
        )
        out[group.name] = _sample(served, served.count()).toPandas()
    return out


def recent_scores(
    spark: SparkSession, work: Paths, usecase: str, model: str, version: int, key: str, start: datetime, end: datetime
) -> pd.Series:
    """Scores of ``model`` ``version`` from every prediction path with ``start < prediction time <= end``."""
    predictions = read_predictions(spark, work, usecase, model, key, PATHS).frame
    if predictions is None:
        return pd.Series([], dtype=float)
    rows = predictions.where(
        (F.col("model_version") == version)
        & (F.col(PREDICTION_TS) > F.lit(start))
        & (F.col(PREDICTION_TS) <= F.lit(end))
    ).select(SCORE)
    return _sample(rows, rows.count()).toPandas()[SCORE]


def _feature_spec_of(client: Any, run_id: str) -> FeatureSpec:
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, "feature_spec.json", folder)
        return FeatureSpec.from_dict(json.loads(Path(path).read_text()))


def resolve_version(client: Any, model: str, version: int | None) -> int:
    """``version``, or the version @champion points to."""
    if version is not None:
        return version
    champion = registry.version_by_alias(model, registry.CHAMPION, client)
    if champion is None:
        raise ConfigError(f"model {model!r} has no @champion. Fix: train it (`loom train --model {model}`)")
    return champion


def compute_drift(
    spark: SparkSession,
    plan: Plan,
    model_name: str,
    work: Paths,
    *,
    at: datetime | None = None,
    version: int | None = None,
    settings: MonitoringSettings | None = None,
    log_to_mlflow: bool = True,
) -> DriftResult:
    """Drift of ``model_name`` (``version``, default @champion) over the window ending at ``at`` (default now)."""
    from common.monitoring.tracking import monitoring_client, version_run_id

    model = plan.model(model_name)
    settings = settings or settings_of(model.spec)
    client = monitoring_client(work)
    version = resolve_version(client, model_name, version)
    run_id = version_run_id(client, model_name, version)
    if run_id is None:
        raise ConfigError(f"model {model_name!r} has no version {version}. Fix: name a registered version")
    profile = load_training_profile(client, run_id)
    if profile is None:
        raise DataError(
            f"the run of {model_name} v{version} ({run_id}) has no training_profile.json, the reference for drift. "
            f"Fix: rebuild it from the run (`loom evaluate --usecase {plan.usecase} --model {model_name} "
            f"--rebuild-profile`), or retrain (`loom retrain --usecase {plan.usecase} --model {model_name} --force`)"
        )
    end = (at or datetime.now(UTC)).astimezone(UTC)
    start = end - timedelta(seconds=settings.window_s)
    spec = _feature_spec_of(client, run_id)
    recent = recent_features(spark, plan, spec, work, start, end)
    rule = settings.drift
    rows: list[dict[str, Any]] = []

    def add(kind: str, name: str, entry: dict[str, Any], values: pd.Series, weights: Any = None) -> None:
        psi, ks = compare(entry, values, weights)
        drifted = (psi is not None and psi >= rule.psi) or (ks is not None and ks >= rule.ks)
        w = pd.Series(1.0 if weights is None else weights, index=values.index)
        missing = float(w[values.isna()].sum() / w.sum()) if len(values) and w.sum() > 0 else None
        rows.append(
            {
                "kind": kind,
                "feature": name,
                "psi": psi,
                "ks": ks,
                "drifted": bool(drifted),
                "rows": len(values),
                "recent_missing": missing,
                "reference_rows": int(entry["count"]),
            }
        )

    for group in spec.groups:
        for name in group.selected:
            entry = profile["features"].get(name)
            if entry is not None:  # a profile without the feature: nothing to compare with
                served = recent[group.name]
                add("feature", name, entry, served[name], served[WEIGHT].to_numpy())
    if profile.get("score") is not None:
        scores = recent_scores(spark, work, plan.usecase, model_name, version, model.entity_key, start, end)
        add("score", SCORE, profile["score"], scores)
    frame = pd.DataFrame(rows)
    frame = frame.assign(
        model_name=model_name,
        model_version=version,
        psi_threshold=rule.psi,
        ks_threshold=rule.ks,
        window_start=pd.Timestamp(start),
        window_end=pd.Timestamp(end),
        computed_at=pd.Timestamp(datetime.now(UTC)),
    )
    table = monitoring_path(work, plan.usecase, DRIFT)
    names = [c.split()[0] for c in _COLUMNS.split(", ")]
    # aware datetimes: Spark converts them to UTC whatever the Python process's time zone
    records = [
        tuple(None if pd.isna(v) else v.to_pydatetime() if isinstance(v, pd.Timestamp) else v for v in r)
        for r in frame[names].itertuples(index=False)
    ]
    stamp = pd.Timestamp(end).tz_convert(None).strftime("%Y-%m-%d %H:%M:%S.%f")
    replace_rows(
        spark,
        spark.createDataFrame(records, _COLUMNS),
        table,
        f"model_name = {sql_string(model_name)} AND model_version = {version} AND window_end = TIMESTAMP'{stamp}'",
    )
    result = DriftResult(model_name, version, start, end, frame, table)
    if log_to_mlflow:
        log_drift(client, run_id, result, settings)
    return result


def log_drift(client: Any, run_id: str, result: DriftResult, settings: MonitoringSettings) -> int:
    """PSI and KS per feature on the version's run (step = window end in Unix seconds), plus plot and table."""
    from common.monitoring import plots
    from common.monitoring.tracking import Point, json_records, log_figure, log_points

    step = int(result.window_end.timestamp())
    points = [
        Point(f"drift_{stat}_{row.feature}", float(value), step, step * 1000)
        for row in result.rows.itertuples()
        for stat, value in (("psi", row.psi), ("ks", row.ks))
        if value is not None and not pd.isna(value)
    ]
    logged = log_points(client, run_id, points)
    shown = result.rows.dropna(subset=["psi"])
    if not shown.empty:
        title = f"{result.model} v{result.version}: drift, window ending {result.window_end:%Y-%m-%d %H:%M} UTC"
        log_figure(
            client, run_id, plots.drift(shown, settings.drift.psi, settings.drift.ks, title), "monitoring/drift.png"
        )
    records = result.rows.assign(
        window_start=result.window_start.isoformat(), window_end=result.window_end.isoformat()
    ).drop(columns=["computed_at"])
    client.log_dict(run_id, json_records(records), "monitoring/drift.json")
    return logged
