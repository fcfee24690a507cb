"""One entry point per question, whatever the source kind.

* :func:`feature_history`: values at every version time (offline store, backfill);
* :func:`feature_latest`: values at each entity's newest time (online store).
"""

from __future__ import annotations

from pyspark.sql import DataFrame

from common.compile.plan import GroupPlan
from common.features.snapshots import snapshot_history, snapshot_latest
from common.features.windows import history, latest, tiles


def feature_history(plan: GroupPlan, prepared: DataFrame) -> DataFrame:
    """Entity key, ``feature_ts`` and the group's features at every version time."""
    if plan.source_kind == "table":
        return snapshot_history(plan, prepared)
    return history(plan, prepared)


def feature_latest(plan: GroupPlan, prepared: DataFrame) -> DataFrame:
    """Entity key, ``feature_ts`` and the group's features at each entity's newest time."""
    if plan.source_kind == "table":
        return snapshot_latest(plan, prepared)
    return latest(plan, tiles(plan, prepared))
