"""The streaming feature job: bronze Delta (as a stream) -> the same plan ->
tiles, offline history and the online store, exactly once.

Events groups keep their tiles in Spark's state store: the query is the plan's
own :func:`~common.features.windows.tiles` (a ``groupBy(entity, tile)`` of the
mergeable partials) run as a streaming aggregation in update mode. Each
micro-batch therefore folds only its own events into the tiles they touch and
emits those tiles whole, with no re-read of bronze. A retried batch re-emits the
same tiles (the state is versioned with the checkpoint), and a late event is
merged into its tile exactly (the state keeps every tile: nothing is dropped for
being late). ``foreachBatch`` then replaces the emitted tiles in the tiles table,
recomputes the touched entities' values at their newest event from their tiles,
and writes them to the online store (event-time guarded) and to the offline
history (MERGE by entity and time).

Table groups (snapshots of a table source) re-read the newest row of each
touched entity from bronze: their sources are small and a row replaces the
previous one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
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

# The tiles' state: RocksDB (off the JVM heap, so millions of tiles fit), checkpointed as changelogs (a
# micro-batch uploads the keys it changed, not a snapshot of the whole state). Set for the feature queries
# only, when they start (Spark keeps the provider in the checkpoint for restarts): other stateful queries
# (triggers) keep the session's provider.
STATE_STORE_CONF = {
    "spark.sql.streaming.stateStore.providerClass": (
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
    ),
    "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
}


@dataclass
class BatchStats:
    group: str
    batch_id: int
    rows: int  # table rows read, or tiles updated
    entities: int
    online_written: int
    online_skipped: int
    seconds: float


def _replace_tiles(spark: SparkSession, plan: GroupPlan, new_tiles: DataFrame, path: str) -> None:
    """Recomputed tiles replace the stored ones (idempotent: a retry writes the same rows)."""
    rows = new_tiles.withColumn(offline.PARTITION, F.to_date(F.timestamp_seconds(TILE)))
    offline.merge_rows(spark, path, rows, [plan.entity_key, TILE])


def process_tiles_batch(
    spark: SparkSession, work: Paths, plan: GroupPlan, new_tiles: DataFrame, clock: Stopwatch
) -> tuple[DataFrame | None, int]:
    """Store the tiles a micro-batch touched (whole, from the state store) and return the touched
    entities' values at their newest event, with the number of tiles."""
    key = plan.entity_key
    new_tiles = new_tiles.cache()
    try:
        bounds = new_tiles.agg(F.min(TILE), F.count("*")).first()
        if not bounds[1]:
            return None, 0
        first_tile, touched = int(bounds[0]), int(bounds[1])
        clock.lap("state")
        path = offline.tiles_path(work, plan)
        _replace_tiles(spark, plan, new_tiles, path)
        clock.lap("tiles")
        entities = new_tiles.select(key).distinct()
        horizon = first_tile - plan.max_window_s
        entity_tiles = (
            spark.read.format("delta")
            .load(path)
            .where(F.col(offline.PARTITION) >= F.to_date(F.timestamp_seconds(F.lit(horizon))))
            .where(F.col(TILE) >= horizon)
            .join(F.broadcast(entities), on=key, how="left_semi")
        )
        return latest(plan, entity_tiles), touched
    finally:
        new_tiles.unpersist()


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
            values, rows = process_table_batch(spark, work, plan, batch, clock)
        else:
            values, rows = process_tiles_batch(spark, work, plan, batch, clock)
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
        stats = BatchStats(plan.name, batch_id, rows, entities, written, skipped, clock.total)
        log.info(
            "features %s batch %d: %d %s, %d entities, online %d written / %d older skipped, %.1f s (%s)",
            stats.group,
            stats.batch_id,
            stats.rows,
            "rows" if plan.source_kind == "table" else "tiles",
            stats.entities,
            stats.online_written,
            stats.online_skipped,
            stats.seconds,
            clock,
        )

    return handle


def feature_checkpoint(work: Paths, plan: GroupPlan) -> str:
    """Where a group's query keeps its offsets (and, for events groups, its tiles' state).

    Events groups have a stateful query, whose checkpoint cannot be one of the former
    stateless query: its own folder name makes a first run rebuild the state from bronze.
    """
    suffix = "" if plan.source_kind == "table" else "_tiles"
    return work.checkpoint(plan.usecase, f"features_{plan.name}{suffix}")


def feature_stream(spark: SparkSession, work: Paths, plan: GroupPlan, stream: DataFrame) -> DataFrame:
    """What a group's query emits per micro-batch: the touched tiles (events groups), or bronze rows (tables)."""
    if plan.source_kind == "table":
        return stream
    return tiles(plan, prepare(plan, stream, join_tables(spark, work, plan)))


@contextlib.contextmanager
def _session_conf(spark: SparkSession, conf: dict[str, str]) -> Iterator[None]:
    """``conf`` set on the session while the block runs (queries started in it keep it), then restored."""
    previous = {key: spark.conf.get(key, None) for key in conf}
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


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
        stream = feature_stream(spark, work, group, reader.load(bronze_path(work, plan.usecase, group.source)))
        writer = (
            stream.writeStream.queryName(f"loom_{plan.usecase}_features_{name}")
            .outputMode("update" if group.source_kind != "table" else "append")
            .option("checkpointLocation", feature_checkpoint(work, group))
            .foreachBatch(make_batch_handler(spark, work, group, write_online))
        )
        writer = writer.trigger(availableNow=True) if available_now else writer.trigger(processingTime=interval)
        with _session_conf(spark, STATE_STORE_CONF if group.source_kind != "table" else {}):
            queries.append(writer.start())
    return queries
