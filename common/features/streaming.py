"""The streaming feature job: bronze Delta (as a stream) -> the same plan ->
tiles, offline history and the online store, exactly once.

Each micro-batch recomputes the tiles its events touch from bronze (so a
retried batch or a late event gives the same tiles, never double counts),
replaces them in the tiles table, then recomputes the touched entities' values
at their newest event and writes them to the online store (event-time guarded)
and to the offline history (MERGE by entity and time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from common.compile.plan import TILE, GroupPlan, Plan
from common.features import offline
from common.features.backfill import bronze_path, join_tables, read_bronze
from common.features.prepare import prepare
from common.features.snapshots import snapshot_latest
from common.features.windows import latest, tiles
from common.log import Stopwatch
from common.settings import Paths

log = logging.getLogger("loom.stream")

OnlineWriter = Callable[[GroupPlan, DataFrame], tuple[int, int]]


@dataclass
class BatchStats:
    group: str
    batch_id: int
    events: int
    entities: int
    online_written: int
    online_skipped: int
    seconds: float


def _replace_tiles(spark: SparkSession, plan: GroupPlan, new_tiles: DataFrame, path: str) -> None:
    """Recomputed tiles replace the stored ones (idempotent: a retry writes the same rows)."""
    rows = new_tiles.withColumn(offline.PARTITION, F.to_date(F.timestamp_seconds(TILE)))
    offline.merge_rows(spark, path, rows, [plan.entity_key, TILE])


def process_events_batch(
    spark: SparkSession, work: Paths, plan: GroupPlan, batch: DataFrame, clock: Stopwatch
) -> tuple[DataFrame | None, int]:
    """Recompute touched tiles and the touched entities' newest values; returns them."""
    key, ts = plan.entity_key, plan.event_time
    batch = batch.select(key, ts).cache()
    touched = (
        batch.where(F.col(ts).isNotNull() & F.col(key).isNotNull())
        .select(key, (F.floor(F.unix_seconds(ts) / plan.slide_s).cast("long") * plan.slide_s).alias(TILE))
        .distinct()
        .cache()
    )
    try:
        bounds = touched.agg(F.min(TILE), F.count("*")).first()
        if not bounds[1]:
            return None, 0
        events = batch.count()
        first_tile = int(bounds[0])
        clock.lap("read")
        source = read_bronze(spark, work, plan.usecase, plan.source).where(
            F.col(ts) >= F.timestamp_seconds(F.lit(first_tile))
        )
        source = source.withColumn(TILE, F.floor(F.unix_seconds(ts) / plan.slide_s).cast("long") * plan.slide_s).join(
            F.broadcast(touched), on=[key, TILE], how="left_semi"
        )
        prepared = prepare(plan, source.drop(TILE), join_tables(spark, work, plan))
        path = offline.tiles_path(work, plan)
        _replace_tiles(spark, plan, tiles(plan, prepared), path)
        clock.lap("tiles")
        entities = touched.select(key).distinct()
        horizon = first_tile - plan.max_window_s
        entity_tiles = (
            spark.read.format("delta")
            .load(path)
            .where(F.col(offline.PARTITION) >= F.to_date(F.timestamp_seconds(F.lit(horizon))))
            .where(F.col(TILE) >= horizon)
            .join(F.broadcast(entities), on=key, how="left_semi")
        )
        values = latest(plan, entity_tiles)
        return values, events
    finally:
        touched.unpersist()
        batch.unpersist()


def process_table_batch(
    spark: SparkSession, work: Paths, plan: GroupPlan, batch: DataFrame, clock: Stopwatch
) -> tuple[DataFrame | None, int]:
    """Newest row of every entity the batch touched -> its feature values."""
    key = plan.entity_key
    entities = batch.select(key).where(F.col(key).isNotNull()).distinct()
    if entities.isEmpty():
        return None, 0
    rows = read_bronze(spark, work, plan.usecase, plan.source).join(F.broadcast(entities), on=key, how="left_semi")
    values = snapshot_latest(plan, prepare(plan, rows, join_tables(spark, work, plan)))
    events = batch.count()
    clock.lap("read")
    return values, events


def make_batch_handler(
    spark: SparkSession, work: Paths, plan: GroupPlan, write_online: OnlineWriter
) -> Callable[[DataFrame, int], None]:
    """The foreachBatch function of one group's stream."""

    def handle(batch: DataFrame, batch_id: int) -> None:
        clock = Stopwatch()
        if plan.source_kind == "table":
            values, events = process_table_batch(spark, work, plan, batch, clock)
        else:
            values, events = process_events_batch(spark, work, plan, batch, clock)
        if values is None:
            return
        values = values.cache()
        try:
            entities = values.count()
            clock.lap("values")
            written, skipped = write_online(plan, values) if plan.online else (0, 0)
            clock.lap("online")
            offline.upsert(spark, plan, values, offline.history_path(work, plan))
            clock.lap("history")
        finally:
            values.unpersist()
        stats = BatchStats(plan.name, batch_id, events, entities, written, skipped, clock.total)
        log.info(
            "features %s batch %d: %d events, %d entities, online %d written / %d older skipped, %.1f events/s (%s)",
            stats.group,
            stats.batch_id,
            stats.events,
            stats.entities,
            stats.online_written,
            stats.online_skipped,
            stats.events / stats.seconds if stats.seconds else 0.0,
            clock,
        )

    return handle


def start_feature_streams(
    spark: SparkSession,
    work: Paths,
    plan: Plan,
    write_online: OnlineWriter,
    *,
    available_now: bool = False,
    interval: str = "5 seconds",
    groups: list[str] | None = None,
    max_files_per_trigger: int | None = None,
) -> list[StreamingQuery]:
    """One streaming query per feature group, reading its bronze source as a Delta stream."""
    queries = []
    for name in groups or list(plan.groups):
        group = plan.group(name)
        # forget (right to be forgotten) rewrites bronze files: skip those change commits, never fail on them
        reader = spark.readStream.format("delta").option("skipChangeCommits", "true")
        if max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
        stream = reader.load(bronze_path(work, plan.usecase, group.source))
        writer = (
            stream.writeStream.queryName(f"loom_{plan.usecase}_features_{name}")
            .option("checkpointLocation", work.checkpoint(plan.usecase, f"features_{name}"))
            .foreachBatch(make_batch_handler(spark, work, group, write_online))
        )
        writer = writer.trigger(availableNow=True) if available_now else writer.trigger(processingTime=interval)
        queries.append(writer.start())
    return queries
