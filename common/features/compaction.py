"""``loom compact``: the off-hot-path upkeep of the offline feature history.

The streaming job only appends (common/features/offline.py), so a key (entity,
``feature_ts``) written again by a later batch (a late event within the state
horizon) holds two rows until this job runs; readers already take the latest
written. Per group, this job

1. finds the dates holding a key with more than one row;
2. deletes, in those dates only, every row that a later write of its key
   superseded (one Delta MERGE whose condition lists the dates, so only their
   files are read and rewritten);
3. runs Delta OPTIMIZE (bin-packing the streaming job's small files).

Why a MERGE that deletes superseded rows rather than an overwrite of the dates
with their latest rows: the MERGE is one transaction that reads the dates it
rewrites, so a micro-batch appended meanwhile either makes it fail with a
conflict (it is retried) or is newer than every row it deletes; an overwrite
computed from an earlier read could drop that batch's rows. Readers' answers
do not change (they apply the same rule), and a second run finds nothing to
delete: the job is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.compile.plan import FEATURE_TS, GroupPlan, Plan
from common.errors import ConfigError
from common.features.offline import PARTITION, WRITE_ORDER, load_history
from common.lake.delta import table_exists
from common.lake.paths import history_path
from common.settings import Paths

log = logging.getLogger("loom.compact")

ATTEMPTS = 3  # a MERGE that conflicts with a concurrent append is retried from a fresh read
_NEWEST = "_newest_order"


@dataclass(frozen=True)
class CompactionReport:
    """What the job did to one group's history."""

    group: str
    table: str
    exists: bool = True
    superseded: int = 0  # rows deleted: a later write of their key exists
    dates: tuple[date, ...] = ()  # the dates rewritten
    files_removed: int = 0  # by OPTIMIZE
    files_added: int = 0
    seconds: float = 0.0


def compact_groups(plan: Plan, groups: Sequence[str] | None = None) -> list[GroupPlan]:
    """The groups to compact: the named ones (each must exist), else every group of the use case."""
    unknown = sorted(set(groups or ()) - set(plan.groups))
    if unknown:
        raise ConfigError(
            f"unknown feature group(s) {unknown} in use case {plan.usecase!r}. Fix: use one of {sorted(plan.groups)}"
        )
    return [plan.groups[name] for name in groups] if groups else list(plan.groups.values())


def superseded_keys(history: DataFrame, plan: GroupPlan) -> DataFrame:
    """(date, entity, feature_ts, newest write order) of every key with more than one row, and the number
    of its rows (``_rows``)."""
    return (
        history.groupBy(PARTITION, plan.entity_key, FEATURE_TS)
        .agg(F.count(F.lit(1)).alias("_rows"), F.max(WRITE_ORDER).alias(_NEWEST))
        .where(F.col("_rows") > 1)
    )


def _delete_superseded(spark: SparkSession, plan: GroupPlan, path: str) -> tuple[int, tuple[date, ...]]:
    """One MERGE deleting the rows that a later write of their key superseded; (rows deleted, dates)."""
    from delta.tables import DeltaTable

    keys = superseded_keys(load_history(spark, path), plan).cache()
    try:
        found = keys.groupBy(PARTITION).agg(F.sum(F.col("_rows") - 1)).collect()
        if not found:
            return 0, ()
        dates = tuple(sorted(row[0] for row in found))
        listed = ", ".join(f"DATE'{d.isoformat()}'" for d in dates)
        key = plan.entity_key
        condition = (
            f"t.{PARTITION} IN ({listed}) AND t.{PARTITION} = s.{PARTITION} AND t.{key} = s.{key} "
            f"AND t.{FEATURE_TS} = s.{FEATURE_TS} AND coalesce(t.{WRITE_ORDER}, -1) < s.{_NEWEST}"
        )
        target = DeltaTable.forPath(spark, path).alias("t")
        target.merge(keys.drop("_rows").alias("s"), condition).whenMatchedDelete().execute()
        return int(sum(row[1] for row in found)), dates
    finally:
        keys.unpersist()


def compact_group(spark: SparkSession, work: Paths, plan: GroupPlan) -> CompactionReport:
    """Keep only the latest row of every key of one group's history, then OPTIMIZE it."""
    from delta.exceptions import ConcurrentAppendException
    from delta.tables import DeltaTable

    started = time.monotonic()
    path = history_path(work, plan)
    if not table_exists(spark, path):
        return CompactionReport(plan.name, path, exists=False)
    if WRITE_ORDER not in spark.read.format("delta").load(path).columns:
        superseded, dates = 0, ()  # written before appends (by MERGE): one row per key already
    else:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                superseded, dates = _delete_superseded(spark, plan, path)
                break
            except ConcurrentAppendException:
                if attempt == ATTEMPTS:
                    raise
                log.info("compact %s: a concurrent append touched the same dates; retrying", plan.name)
    metrics = DeltaTable.forPath(spark, path).optimize().executeCompaction().select("metrics").first()[0]
    return CompactionReport(
        plan.name,
        path,
        superseded=superseded,
        dates=dates,
        files_removed=int(metrics.numFilesRemoved),
        files_added=int(metrics.numFilesAdded),
        seconds=time.monotonic() - started,
    )


def compact(
    spark: SparkSession, work: Paths, plan: Plan, groups: Sequence[str] | None = None
) -> list[CompactionReport]:
    """Compact every group of the plan (or the named ones); one report per group."""
    return [compact_group(spark, work, group) for group in compact_groups(plan, groups)]


def _span(dates: tuple[date, ...]) -> str:
    if not dates:
        return "-"
    return dates[0].isoformat() if len(dates) == 1 else f"{dates[0].isoformat()} .. {dates[-1].isoformat()}"


def render(reports: Sequence[CompactionReport]) -> str:
    """The job's table: one line per group."""
    lines = [f"{'group':<16} {'superseded':>10} {'dates':>6}  {'date range':<24} {'files':>13}  table"]
    for r in reports:
        if not r.exists:
            lines.append(f"{r.group:<16} {'no history yet':>43}  {r.table}")
            continue
        files = f"{r.files_removed} -> {r.files_added}"
        lines.append(f"{r.group:<16} {r.superseded:>10} {len(r.dates):>6}  {_span(r.dates):<24} {files:>13}  {r.table}")
    return "\n".join(lines)
