"""Feature values at given (entity, time) rows, recomputed from bronze with the
backfill's own functions: the value the offline history holds (or will hold)
at that time, for the few rows a trigger fires on, without waiting for the
feature stream to write it."""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.compile.feature_spec import FeatureSpec
from common.compile.plan import Plan
from common.features.backfill import join_tables
from common.features.compute import feature_history
from common.features.point_in_time import HistoryInput, as_of_join
from common.features.prepare import prepare
from common.lake.snapshot_read import read_bronze_between
from common.settings import Paths


def features_at(
    spark: SparkSession,
    work: Paths,
    plan: Plan,
    spec: FeatureSpec,
    rows: DataFrame,
    time_column: str,
    bounds: tuple[datetime | None, datetime | None] | None = None,
) -> DataFrame:
    """``rows`` plus the model's lookup features as of ``rows[time_column]``, and ``_<group>_ts``
    (when each group's value was computed). Same semantics as the point-in-time training set.

    ``bounds``: the least and greatest ``rows[time_column]`` when the caller knows them already (as
    ``collect`` returns them), which saves a Spark job; by default they are computed here."""
    key = spec.entity_key
    keys = rows.select(key).distinct()
    if bounds is None:
        bounds = tuple(rows.agg(F.min(time_column), F.max(time_column)).first())
    inputs = []
    for group in spec.groups:
        group_plan = plan.group(group.name)
        since = until = None
        if group_plan.event_time and bounds[1] is not None:
            until = bounds[1]
            if group_plan.source_kind == "events":
                since = bounds[0] - timedelta(seconds=group_plan.max_window_s + group_plan.slide_s)
        source = read_bronze_between(spark, work, plan.usecase, group_plan.source, group_plan.event_time, since, until)
        source = source.join(F.broadcast(keys), key, "left_semi")
        if until is not None:
            source = source.where(F.col(group_plan.event_time) <= F.lit(until))
        if since is not None:
            source = source.where(F.col(group_plan.event_time) >= F.lit(since))
        history = feature_history(group_plan, prepare(group_plan, source, join_tables(spark, work, group_plan)))
        inputs.append(HistoryInput(group_plan, history, tuple(group.selected), f"_{group.name}_ts"))
    return as_of_join(rows, inputs, time_column)
