"""Batch scoring: features as of a time, scored with ``mlflow.pyfunc.spark_udf``,
written to the predictions Delta table with the model name and version."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import reduce
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.compile.feature_spec import FeatureSpec
from common.compile.plan import FEATURE_TS, Plan
from common.errors import ConfigError
from common.features.offline import load_history
from common.lake.delta import table_exists
from common.lake.paths import history_path, predictions_path
from common.models import registry
from common.models.training_set import create_training_set
from common.settings import Paths

PREDICTION_TS = "prediction_ts"
SCORE = "score"
_REF = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<alias>[a-z][a-z0-9_]*)|/(?P<version>\d+))?$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: ``churn@champion`` -> name churn, version 3."""

    name: str
    version: int
    alias: str | None

    @property
    def uri(self) -> str:
        """The URI of the exact version (an alias may move while a job runs)."""
        return f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return f"{self.name}@{self.alias} (v{self.version})" if self.alias else f"{self.name} v{self.version}"


def resolve_model(text: str, work: Paths | None = None) -> ModelRef:
    """``name@alias``, ``name/version`` or ``name`` (= ``name@champion``) -> the exact registered version."""
    match = _REF.match(text)
    if not match:
        raise ConfigError(f"--model {text!r} is not a model reference. Fix: write churn@champion, churn/3 or churn")
    name = match["name"]
    if match["version"]:
        version = int(match["version"])
        from mlflow.exceptions import MlflowException

        try:
            registry.client(work).get_model_version(name, str(version))
        except MlflowException as err:
            raise ConfigError(f"model {name!r} has no version {version}. Fix: `loom train --model {name}`") from err
        return ModelRef(name, version, None)
    alias = match["alias"] or registry.CHAMPION
    version = registry.version_by_alias(name, alias, registry.client(work))
    if version is None:
        raise ConfigError(
            f"model {name!r} has no @{alias} in the registry. Fix: train it (`loom train --model {name}`) "
            "or name a version (name/3)"
        )
    return ModelRef(name, version, alias)


def model_feature_spec(ref: ModelRef, work: Paths | None = None) -> FeatureSpec:
    """The feature spec the version was trained with (from its run's artifacts)."""
    import mlflow

    run_id = registry.client(work).get_model_version(ref.name, str(ref.version)).run_id
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="feature_spec.json")
    return FeatureSpec.from_dict(json.loads(Path(path).read_text()))


def _times_frame(spark: SparkSession, times: Sequence[datetime]) -> DataFrame:
    """The scoring times as a one-column (``prediction_ts``) frame, broadcast to every join."""
    return F.broadcast(spark.createDataFrame([(t,) for t in times], f"{PREDICTION_TS} timestamp"))


def known_entities(
    spark: SparkSession, plan: Plan, spec: FeatureSpec, work: Paths, times: Sequence[datetime]
) -> DataFrame:
    """(entity, ``prediction_ts``) for each time and every entity with a feature value at or before it
    in any of the model's groups. The histories are read once, whatever the number of times."""
    frames = []
    for group in spec.groups:
        path = history_path(work, plan.group(group.name))
        if table_exists(spark, path):
            # only each entity's first feature_ts counts: a key written twice (latest wins) cannot change it
            frames.append(load_history(spark, path).select(spec.entity_key, FEATURE_TS))
    if not frames:
        raise ConfigError(
            f"no feature history for model {spec.model!r}. Fix: run `loom backfill --usecase {plan.usecase}`"
        )
    first_seen = reduce(DataFrame.unionByName, frames).groupBy(spec.entity_key).agg(F.min(FEATURE_TS).alias("_first"))
    return (
        first_seen.crossJoin(_times_frame(spark, times))
        .where(F.col("_first") <= F.col(PREDICTION_TS))
        .select(spec.entity_key, PREDICTION_TS)
    )


def score_frame(
    spark: SparkSession, ref: ModelRef, spec: FeatureSpec, features: DataFrame, work: Paths | None = None
) -> DataFrame:
    """``features`` plus ``score``, from the model version's pyfunc through ``spark_udf``."""
    import mlflow

    from common.runtime.tracking import configure

    configure(work)
    udf = mlflow.pyfunc.spark_udf(spark, ref.uri, result_type="double", env_manager="local")
    # the signature lists the entity key first, then the features: pass them in that order
    return features.withColumn(SCORE, udf(*[F.col(c) for c in (spec.entity_key, *spec.lookup_features)]))


def score_batch(
    spark: SparkSession,
    plan: Plan,
    model: str,
    at: datetime | Sequence[datetime],
    work: Paths,
    entities: DataFrame | None = None,
) -> tuple[ModelRef, DataFrame, str]:
    """Score ``entities`` (default: all known at each time) as of ``at``; returns the model, the written
    rows and the table.

    ``at`` may be several times (a backtest, or daily runs caught up in one job): one point-in-time
    join and one scoring pass for all of them. Re-running the same model version and times replaces
    their earlier rows (idempotent).
    """
    times = sorted({at} if isinstance(at, datetime) else set(at))
    if not times:
        raise ConfigError("score_batch needs at least one time in `at`. Fix: pass a datetime or a list of them")
    ref = resolve_model(model, work)
    spec = model_feature_spec(ref, work)
    key = spec.entity_key
    if entities is None:
        rows = known_entities(spark, plan, spec, work, times)
    else:
        rows = entities.select(key).crossJoin(_times_frame(spark, times))
    refs = [f"{g.name}.{f}" for g in spec.groups for f in g.selected]
    features = create_training_set(
        rows, refs, plan=plan, work=work, time_column=PREDICTION_TS, time_range=(times[0], times[-1])
    ).frame
    scored = score_frame(spark, ref, spec, features, work).select(
        F.col(key),
        F.col(PREDICTION_TS),
        F.col(SCORE),
        F.lit(ref.name).alias("model_name"),
        F.lit(ref.version).alias("model_version"),
        F.current_timestamp().alias("scored_at"),
    )
    path = predictions_path(work, plan.usecase)
    exists = table_exists(spark, path)
    writer = scored.write.format("delta").mode("overwrite" if exists else "errorifexists")
    stamps = ", ".join(f"TIMESTAMP'{t.strftime('%Y-%m-%d %H:%M:%S.%f')}'" for t in times)
    if exists:
        writer = writer.option(
            "replaceWhere",
            f"model_name = '{ref.name}' AND model_version = {ref.version} AND {PREDICTION_TS} IN ({stamps})",
        )
    writer.save(path)
    written = (
        spark.read.format("delta")
        .load(path)
        .where(
            (F.col("model_name") == ref.name)
            & (F.col("model_version") == ref.version)
            & F.col(PREDICTION_TS).isin(*[F.lit(t).cast("timestamp") for t in times])
        )
    )
    return ref, written, path
