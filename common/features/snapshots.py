"""Features of ``table`` sources: expressions over an entity's row, versioned by its event time."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from common.compile.plan import FEATURE_TS, GroupPlan
from common.features.prepare import latest_rows


def snapshot_history(plan: GroupPlan, prepared: DataFrame) -> DataFrame:
    """One row per (entity, version time) with each feature's expression."""
    ts = F.col(plan.event_time) if plan.event_time else F.current_timestamp()
    values = [F.expr(sql).cast("double").alias(name) for name, sql in plan.expressions]
    rows = prepared.select(plan.entity_key, ts.alias(FEATURE_TS), *values)
    return rows.dropDuplicates([plan.entity_key, FEATURE_TS])


def snapshot_latest(plan: GroupPlan, prepared: DataFrame) -> DataFrame:
    """The newest version of each entity's features."""
    return latest_rows(snapshot_history(plan, prepared), plan.entity_key, FEATURE_TS)
