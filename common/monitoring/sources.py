"""What the evaluation reads: every prediction table of a use case, and the outcomes.

Prediction tables live at ``common.lake.paths.predictions_path(work,
usecase, kind)`` for kind batch, stream, rest and shadow; a missing table is skipped.
Each is normalized to: entity key, ``prediction_ts``, ``score``, ``model_name``,
``model_version`` and ``path`` (the kind). The prediction time is the table's
``prediction_ts`` (batch, REST) or ``firing_ts`` (stream, shadow).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.compile.models import ModelPlan
from common.errors import DataError
from common.lake.delta import table_exists
from common.lake.paths import predictions_path
from common.settings import Paths
from common.spec.sources import Source

# shadow: a @shadow version's scores of the stream's firings (common.models.shadow)
PATHS: tuple[str, ...] = ("batch", "stream", "rest", "shadow")
PREDICTION_TS = "prediction_ts"
LABEL_TS = "label_ts"
LABEL = "label"
# the prediction time of each table, by the first of these columns it has
TIME_COLUMNS: tuple[str, ...] = ("prediction_ts", "firing_ts")


@dataclass
class Predictions:
    """The normalized union of the prediction tables that exist, and which ones did."""

    frame: DataFrame | None
    found: dict[str, str] = field(default_factory=dict)  # kind -> table path
    missing: list[str] = field(default_factory=list)


def _normalize(table: DataFrame, kind: str, path: str, key: str) -> DataFrame:
    time_column = next((c for c in TIME_COLUMNS if c in table.columns), None)
    needed = [key, "score", "model_name", "model_version"]
    absent = [c for c in needed if c not in table.columns] + ([] if time_column else [" or ".join(TIME_COLUMNS)])
    if absent:
        raise DataError(
            f"predictions table {path} ({kind}) lacks columns {absent}; it has {table.columns}. "
            f"Fix: write {needed} and a prediction time ({' or '.join(TIME_COLUMNS)}) to it"
        )
    return table.select(
        F.col(key).cast("string").alias(key),
        F.col(time_column).cast("timestamp").alias(PREDICTION_TS),
        F.col("score").cast("double").alias("score"),
        F.col("model_name").cast("string").alias("model_name"),
        F.col("model_version").cast("int").alias("model_version"),
        F.lit(kind).alias("path"),
    )


def read_predictions(
    spark: SparkSession, work: Paths, usecase: str, model_name: str, key: str, paths: tuple[str, ...] = PATHS
) -> Predictions:
    """Scored predictions of ``model_name`` from every prediction table that exists (rows without a
    score or a version, e.g. firings while no model was registered, are not predictions)."""
    found: dict[str, str] = {}
    missing: list[str] = []
    union: DataFrame | None = None
    for kind in paths:
        path = predictions_path(work, usecase, kind)
        if not table_exists(spark, path):
            missing.append(kind)
            continue
        found[kind] = path
        rows = _normalize(spark.read.format("delta").load(path), kind, path, key)
        rows = rows.where(
            (F.col("model_name") == model_name)
            & F.col("score").isNotNull()
            & F.col("model_version").isNotNull()
            & F.col(PREDICTION_TS).isNotNull()
        )
        union = rows if union is None else union.unionByName(rows)
    return Predictions(union, found, missing)


def read_outcomes(
    spark: SparkSession, work: Paths, usecase: str, model: ModelPlan, source: Source | None = None
) -> DataFrame:
    """The model's labels as they have arrived: entity key, ``label_ts`` and 0/1 ``label``, from the
    label source's bronze table (the same expression and time column as the training set, and, when
    ``source`` (the label source's spec) has an ``id``, the latest ingested row per id)."""
    from common.lake.paths import bronze_path

    path = bronze_path(work, usecase, model.label_source)
    if not table_exists(spark, path):
        raise DataError(
            f"bronze table of label source {model.label_source!r} does not exist at {path}. "
            f"Fix: run `loom ingest --usecase {usecase}` first"
        )
    from common.models.labels import label_rows

    bronze = spark.read.format("delta").load(path)
    rows = label_rows(
        bronze,
        source,
        key=model.entity_key,
        time=model.label_time,
        expr=model.label_expr,
        label=LABEL,
        time_alias=LABEL_TS,
    )
    return rows.withColumn(model.entity_key, F.col(model.entity_key).cast("string"))
