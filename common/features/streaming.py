"""The streaming feature job: bronze Delta (as a stream) -> the same plan ->
the online store and the offline history, exactly once.

Events groups keep each entity's tiles in Spark's state store (RocksDB,
changelog checkpoints): the query prepares the rows with the plan's own
functions (joins, transforms, each feature's row value), groups them by entity
and folds them into the entity's :class:`~common.features.tile_state.TileState`
with ``transformWithState`` (:class:`TileProcessor`). A micro-batch therefore costs in proportion to
its own events: bronze is never re-read and no tiles table is merged. For each
entity the batch touched, the operator emits the features at its newest event,
which ``foreachBatch`` writes to the online store (event-time guarded) and
appends to the offline history (idempotent by ``txnAppId``/``txnVersion``: no
MERGE on the hot path; a key written twice is read latest-wins, and ``loom
compact`` rewrites it off the hot path: common/features/offline.py). A retried
batch re-emits the same values (the state is versioned with the checkpoint); a late event within
the longest window of the entity's newest event is folded exactly; an older
one cannot change the online value and is counted by the backfill (docs/time-semantics.md,
"Late and out-of-order data").

Table groups (snapshots of a table source) re-read the newest row of each
touched entity from bronze: their sources are small and a row replaces the
previous one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle, StreamingQuery
from pyspark.sql.types import BinaryType, StructField, StructType

from common.compile.plan import EVENT_ID, FEATURE_TS, TS_MICROS, GroupPlan, Plan
from common.features import offline
from common.features.backfill import join_tables
from common.features.join_cache import current_rows, refreshing
from common.features.prepare import join_rows, prepare
from common.features.snapshots import snapshot_latest
from common.features.tile_state import TileFolder, TileState
from common.features.windows import value_column, with_row_values
from common.lake.delta import read_bronze
from common.lake.paths import bronze_path, history_path
from common.lake.snapshot_read import read_bronze_between
from common.lake.stream_start import stream_start_options
from common.runtime.log import Stopwatch
from common.runtime.state_store import rocksdb_state_store
from common.settings import Paths

log = logging.getLogger("loom.stream")

OnlineWriter = Callable[[GroupPlan, DataFrame], tuple[int, int]]


@dataclass
class BatchStats:
    group: str
    batch_id: int
    entities: int
    online_written: int
    online_skipped: int
    seconds: float


ONLINE_ROWS_PER_TASK = 50_000  # entities per task of a batch's online write

ROW = "_row"  # one JSON object per event: the operator reads one column, not one per feature
OUT = "_values"  # JSON array: newest event µs, then the group's features
TILES_STATE = StructType([StructField("tiles", BinaryType())])  # the entity's TileState, as orjson


def stream_join_rows(spark: SparkSession, work: Paths, plan: GroupPlan) -> dict[str, DataFrame]:
    """The current rows of each table the group joins, for a streaming plan: cached while the table is unchanged
    (:mod:`common.features.join_cache`), not re-read and re-ranked in every micro-batch."""
    return {
        join.source: current_rows(
            spark,
            bronze_path(work, plan.usecase, join.source),
            lambda join=join: join_rows(plan, join, read_bronze(spark, work, plan.usecase, join.source)),
            plan.entity_key,
            join.event_time,
            list(join.columns),
        )
        for join in plan.joins
    }


def tile_rows(spark: SparkSession, work: Paths, plan: GroupPlan, stream: DataFrame) -> DataFrame:
    """Bronze rows -> (entity, the event as JSON: µs, id and each feature's row value): the operator's input.

    Python rows cost per column: one text column keeps the operator's cost flat whatever the number of
    features.
    """
    prepared = with_row_values(plan, prepare(plan, stream, current=stream_join_rows(spark, work, plan)))
    fields = [F.col(TS_MICROS).alias("t"), F.col(EVENT_ID).alias("i")]
    fields += [F.col(value_column(agg)).alias(f"v{index}") for index, agg in enumerate(plan.aggregations)]
    return prepared.select(plan.entity_key, F.to_json(F.struct(*fields)).alias(ROW))


class TileProcessor(StatefulProcessor):
    """Per entity, its :class:`TileState` in a value state: a micro-batch's rows are folded into it and, if any
    counted, the entity's features at its newest event are emitted as :data:`OUT`.

    ``transformWithState``'s row API, not ``applyInPandasWithState``: the latter builds a pandas frame for every
    entity and every output, which cost more than the fold itself (the same fold over 200k events and 10k
    entities ran about three times faster with rows).
    """

    def __init__(self, plan: GroupPlan) -> None:
        self.entity_key = plan.entity_key
        self.folder = TileFolder(plan.aggregations, plan.slide_s)
        self.index_of = {f"v{index}": index for index in range(len(plan.aggregations))}
        names = [agg.name for agg in plan.aggregations]
        self.order = [names.index(name) for name in plan.feature_names]

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.tiles = handle.getValueState("tiles", TILES_STATE)

    def event(self, text: str) -> tuple[int, str, dict[int, Any]]:
        row = orjson.loads(text)  # to_json leaves out null fields: only the aggregations the row counts for
        index_of = self.index_of
        return row["t"], row["i"], {index_of[k]: v for k, v in row.items() if k in index_of}

    def handleInputRows(self, key: Any, rows: Iterator[Row], timerValues: Any) -> Iterator[Row]:
        stored = self.tiles.get()
        tiles = TileState.from_json(orjson.loads(stored[0])) if stored is not None else TileState()
        if not self.folder.fold(tiles, [self.event(row[ROW]) for row in rows]):
            return
        self.tiles.update((orjson.dumps(tiles.to_json()),))
        features = self.folder.values(tiles)
        out = orjson.dumps([tiles.newest_us, *[features[index] for index in self.order]]).decode()
        yield Row(**{self.entity_key: key[0], OUT: out})

    def close(self) -> None:
        pass


def entity_features(spark: SparkSession, work: Paths, plan: GroupPlan, stream: DataFrame) -> DataFrame:
    """Streaming DataFrame: the features of every entity a micro-batch touched, at its newest event
    (entity key and :data:`OUT`; :func:`unpack_values` turns them into columns)."""
    rows = tile_rows(spark, work, plan, stream)
    key_type = rows.schema[plan.entity_key].dataType.simpleString()
    return rows.groupBy(plan.entity_key).transformWithState(
        TileProcessor(plan),
        outputStructType=f"{plan.entity_key} {key_type}, {OUT} string",
        outputMode="Update",
        timeMode="None",
    )


def unpack_values(plan: GroupPlan, batch: DataFrame) -> DataFrame:
    """The operator's output as entity key, ``feature_ts`` and one double per feature."""
    values = F.from_json(F.col(OUT), "array<double>")
    return batch.select(
        plan.entity_key,
        F.timestamp_micros(values[0].cast("long")).alias(FEATURE_TS),
        *[values[index + 1].alias(name) for index, name in enumerate(plan.feature_names)],
    )


def process_table_batch(
    spark: SparkSession, work: Paths, plan: GroupPlan, batch: DataFrame, clock: Stopwatch
) -> DataFrame | None:
    """Newest row of every entity the batch touched -> its feature values."""
    key = plan.entity_key
    entities = batch.select(key).where(F.col(key).isNotNull()).distinct()
    if entities.isEmpty():
        return None
    bronze = read_bronze_between(spark, work, plan.usecase, plan.source, time_column=None)
    rows = bronze.join(F.broadcast(entities), on=key, how="left_semi")
    values = snapshot_latest(plan, prepare(plan, rows, join_tables(spark, work, plan)))
    clock.lap("read")
    return values


def feature_query_name(plan: GroupPlan) -> str:
    """The streaming query name of a group (unique among a session's active queries)."""
    return f"loom_{plan.usecase}_features_{plan.name}"


def history_app_id(spark: SparkSession, query_name: str) -> str:
    """The ``txnAppId`` of a group's history appends: from the id of its running query, which the checkpoint
    keeps across restarts (a restarted query's batch ids continue, a replayed batch is skipped) and which a
    new checkpoint changes (its batch ids restart at 0 under a new app id, so nothing is skipped wrongly,
    even when the new checkpoint has the old one's path)."""
    for query in spark.streams.active:
        if query.name == query_name:
            return f"loom-features-{query.id}"
    raise RuntimeError(f"no active streaming query named {query_name!r}: the history append has no app id")


def make_batch_handler(
    spark: SparkSession, work: Paths, plan: GroupPlan, write_online: OnlineWriter, app_id: str | None = None
) -> Callable[[DataFrame, int], None]:
    """The foreachBatch function of one group's stream: values -> online store + offline history.

    ``app_id`` (the history's ``txnAppId``) defaults to :func:`history_app_id` of the group's query, found
    on the first batch. ``spark`` must be the session that started the query: the session a batch carries
    is a clone, with its own (empty) list of active queries.
    """
    resolved: list[str] = [app_id] if app_id else []

    def handle(batch: DataFrame, batch_id: int) -> None:
        clock = Stopwatch()
        if plan.source_kind == "table":
            values = process_table_batch(spark, work, plan, batch, clock)
            if values is None:
                return
        else:
            values = unpack_values(plan, batch)
        values = values.cache()
        try:
            entities = values.count()
            clock.lap("state")
            if not entities:
                return
            # a few entities per task: every task of the online write opens its Redis connection and loads
            # its script, which cost more than the writes of a small batch's 4 shuffle partitions
            online_tasks = max(1, math.ceil(entities / ONLINE_ROWS_PER_TASK))
            written, skipped = write_online(plan, values.coalesce(online_tasks)) if plan.online else (0, 0)
            clock.lap("online")
            if not resolved:
                resolved.append(history_app_id(spark, feature_query_name(plan)))
            offline.append(spark, plan, values, history_path(work, plan), resolved[0], batch_id)
            clock.lap("history")
        finally:
            values.unpersist()
        stats = BatchStats(plan.name, batch_id, entities, written, skipped, clock.total)
        log.info(
            "features %s batch %d: %d entities, online %d written / %d older skipped, %.1f s (%s)",
            stats.group,
            stats.batch_id,
            stats.entities,
            stats.online_written,
            stats.online_skipped,
            stats.seconds,
            clock,
        )

    return handle


def feature_checkpoint(work: Paths, plan: GroupPlan) -> str:
    """Where a group's query keeps its offsets (and, for events groups, its tiles' state).

    Events groups have a stateful query, whose checkpoint cannot be one of an earlier operator's (the stateless
    query's, then ``applyInPandasWithState``'s ``_state``): a folder name of its own makes a first run rebuild
    the state from bronze.
    """
    suffix = "" if plan.source_kind == "table" else "_tiles"
    return work.checkpoint(plan.usecase, f"features_{plan.name}{suffix}")


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
        source = bronze_path(work, plan.usecase, group.source)
        reader = spark.readStream.format("delta").option("skipChangeCommits", "true")
        reader = reader.options(**stream_start_options(source, feature_checkpoint(work, group)))
        if max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
        stream = reader.load(source)
        stateful = group.source_kind != "table"
        if stateful:
            stream = entity_features(spark, work, group, stream)
        writer = (
            stream.writeStream.queryName(feature_query_name(group))
            .outputMode("update" if stateful else "append")
            .option("checkpointLocation", feature_checkpoint(work, group))
            .foreachBatch(refreshing(spark, make_batch_handler(spark, work, group, write_online)))
        )
        writer = writer.trigger(availableNow=True) if available_now else writer.trigger(processingTime=interval)
        with rocksdb_state_store(spark, enabled=stateful):
            queries.append(writer.start())
    return queries
