"""``loom materialize``: publish the offline feature history, as of a time, into the online store.

For each online feature group, the newest history row of every entity with ``feature_ts <= at``
(latest written wins at equal times: :func:`common.features.offline.latest_rows`) is the vector the online store would hold at ``at`` (docs/time-semantics.md); it goes through
the same Spark -> Redis writer as the streaming job (:func:`common.features.online_sink.
spark_online_writer`), so the event-time guard applies: a vector older than the one
stored (e.g. written by the stream) is skipped, an equal one is rewritten with the same bytes.
Re-running is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from common.compile.plan import FEATURE_TS, GroupPlan, Plan
from common.errors import ConfigError, DataError
from common.features.offline import latest_rows, load_history
from common.features.online_sink import spark_online_writer
from common.lake.delta import table_exists
from common.lake.paths import history_path
from common.settings import Paths


@dataclass(frozen=True)
class MaterializeReport:
    """What one group published: entities with a vector as of ``at``, written and skipped as older."""

    group: str
    at: datetime
    entities: int
    written: int
    skipped: int
    newest: datetime | None  # the newest feature_ts published
    table: str


def materialize_groups(plan: Plan, groups: Sequence[str] | None = None) -> list[GroupPlan]:
    """The groups to publish: the named ones (each must exist and be online), else every online group."""
    if not groups:
        chosen = [g for g in plan.groups.values() if g.online]
        if not chosen:
            raise ConfigError(
                f"use case {plan.usecase!r} has no online feature group. "
                "Fix: set online: true on a feature group in its metadata"
            )
        return chosen
    unknown = [g for g in groups if g not in plan.groups]
    if unknown:
        raise ConfigError(f"unknown feature group(s) {unknown}. Fix: use one of {sorted(plan.groups)}")
    offline_only = [g for g in groups if not plan.groups[g].online]
    if offline_only:
        raise ConfigError(
            f"feature group(s) {offline_only} are offline only (online: false). "
            f"Fix: set online: true in the metadata, or pick one of "
            f"{sorted(n for n, g in plan.groups.items() if g.online)}"
        )
    return [plan.groups[g] for g in groups]


def materialize_group(
    spark: SparkSession, work: Paths, group: GroupPlan, at: datetime, redis_url: str
) -> MaterializeReport:
    """Publish one group's history as of ``at`` into the online store at ``redis_url``."""
    path = history_path(work, group)
    if not table_exists(spark, path):
        raise DataError(
            f"feature group {group.name!r} has no offline history at {path}. "
            f"Fix: run `loom backfill --usecase {group.usecase}` first"
        )
    history = load_history(spark, path).where(F.col(FEATURE_TS) <= F.lit(at))
    newest = latest_rows(history, group, per_entity=True)
    vectors = newest.select(group.entity_key, FEATURE_TS, *group.feature_names).cache()
    try:
        entities, newest = vectors.agg(F.count("*"), F.max(FEATURE_TS)).first()
        written, skipped = spark_online_writer(redis_url)(group, vectors)
    finally:
        vectors.unpersist()
    return MaterializeReport(group.name, at, int(entities), written, skipped, newest, path)


def materialize(
    spark: SparkSession,
    work: Paths,
    plan: Plan,
    at: datetime,
    redis_url: str,
    groups: Sequence[str] | None = None,
) -> list[MaterializeReport]:
    """Publish every online group (or the named ones) as of ``at``; one report per group."""
    return [materialize_group(spark, work, group, at, redis_url) for group in materialize_groups(plan, groups)]


def render(reports: Sequence[MaterializeReport]) -> str:
    """The job's table: one line per group."""
    lines = [f"{'group':<16} {'as of':<20} {'entities':>9} {'written':>9} {'skipped':>9}  newest vector"]
    for r in reports:
        newest = f"{r.newest:%Y-%m-%d %H:%M:%S}" if r.newest else "-"
        lines.append(f"{r.group:<16} {r.at:%Y-%m-%d %H:%M:%S} {r.entities:>9} {r.written:>9} {r.skipped:>9}  {newest}")
    return "\n".join(lines)
