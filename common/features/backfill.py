"""Batch backfill of the offline store from bronze: incremental and idempotent.

Without a range, a backfill recomputes from the earliest event date among
the bronze rows ingested since the previous backfill (late data included),
and replaces those dates. With ``start``/``end`` it replaces exactly that
range. Either way, running it again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.compile.plan import GroupPlan, Plan
from common.features.compute import feature_history
from common.features.offline import PARTITION, replace_range
from common.features.prepare import prepare
from common.lake.delta import read_bronze, table_exists
from common.lake.paths import history_path
from common.settings import Paths

INGESTED_AT = "_ingested_at"
HWM_PROPERTY = "loom.backfill.ingestedUpTo"


@dataclass(frozen=True)
class BackfillReport:
    group: str
    table: str
    start: date | None
    end: date | None
    rows: int
    entities: int
    skipped: bool = False
    first: date | None = None  # the first and last dates (UTC) of the rows written
    last: date | None = None

    @property
    def span(self) -> str:
        """The range column of the job's summary: the dates the rows written cover."""
        if self.skipped:
            return "nothing new"
        if self.first is None or self.last is None:
            return "no rows"
        return f"{self.first.isoformat()} .. {self.last.isoformat()}"


def join_tables(spark: SparkSession, work: Paths, plan: GroupPlan) -> dict[str, DataFrame]:
    """Bronze DataFrames of the table sources a group joins."""
    return {j.source: read_bronze(spark, work, plan.usecase, j.source) for j in plan.joins}


def _table_property(spark: SparkSession, path: str, key: str) -> str | None:
    rows = spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()
    return next((r.value for r in rows if r.key == key), None)


def _set_table_property(spark: SparkSession, path: str, key: str, value: str) -> None:
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('{key}' = '{value}')")


def backfill_group(
    spark: SparkSession,
    work: Paths,
    plan: GroupPlan,
    start: date | None = None,
    end: date | None = None,
) -> BackfillReport:
    """Compute the group's history from bronze and replace the affected dates."""
    source = read_bronze(spark, work, plan.usecase, plan.source)
    target = history_path(work, plan)
    explicit = start is not None or end is not None
    mark = _table_property(spark, target, HWM_PROPERTY) if table_exists(spark, target) else None
    # One pass over bronze for both the newest ingestion time and the earliest fresh event.
    fresh_time = F.col(plan.event_time) if plan.event_time else F.lit(None).cast("timestamp")
    if mark is not None:
        fresh_time = F.when(F.col(INGESTED_AT) > F.lit(datetime.fromisoformat(mark)), fresh_time)
    newest_ingest, earliest = source.agg(F.max(INGESTED_AT), F.min(fresh_time)).first()
    if not explicit and mark is not None:
        if earliest is None:
            return BackfillReport(plan.name, target, None, None, 0, 0, skipped=True)
        start = earliest.date()
    if plan.event_time is not None and start is not None:
        # events before `start` still count in windows that end after it
        lookback = datetime.combine(start, datetime.min.time()) - timedelta(seconds=plan.max_window_s + plan.slide_s)
        source = source.where(F.col(plan.event_time) >= F.lit(lookback))
    if plan.event_time is not None and end is not None:
        source = source.where(F.col(plan.event_time) < F.lit(datetime.combine(end, datetime.min.time())))
    prepared = prepare(plan, source, join_tables(spark, work, plan))
    replace_range(spark, plan, feature_history(plan, prepared), target, start, end)
    # Counted from the rows just written (two narrow columns, pruned to the range) rather
    # than by caching the whole computed history in memory to count it.
    written = spark.read.format("delta").load(target)
    if start is not None:
        written = written.where(F.col(PARTITION) >= F.lit(start))
    if end is not None:
        written = written.where(F.col(PARTITION) < F.lit(end))
    counts = written.agg(F.count("*"), F.countDistinct(plan.entity_key), F.min(PARTITION), F.max(PARTITION)).first()
    if newest_ingest is not None:
        _set_table_property(spark, target, HWM_PROPERTY, newest_ingest.isoformat())
    return BackfillReport(
        plan.name, target, start, end, int(counts[0]), int(counts[1]), first=counts[2], last=counts[3]
    )


def backfill(
    spark: SparkSession,
    work: Paths,
    plan: Plan,
    groups: list[str] | None = None,
    start: date | None = None,
    end: date | None = None,
) -> list[BackfillReport]:
    """Backfill every group of the plan (or the named ones)."""
    names = groups or list(plan.groups)
    return [backfill_group(spark, work, plan.group(name), start, end) for name in names]
