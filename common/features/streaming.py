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

When ``loom stream`` runs the triggers too, an events group whose tiles the trigger operator already keeps
(same source and entity) gets no query here: the trigger query emits its vectors and writes them with
:func:`write_vector_rows` (common/triggers/shared_state.py), so its events are folded once.

Where a small events batch's time goes (measured 2026-12-07, local[2], Spark UI off; the activity group alone
over 92.5k bronze events of 2,000 customers x 12 days, 30 bronze files a batch: 5 batches of 10.8k-22.4k events
and 1,400-1,970 entities; streaming progress and this module's batch line):

* after the first, a batch took 3.0-3.7 s at load 1-3.3: planning 0.2-0.3 s, foreachBatch 2.6-3.2 s (the
  ``state`` lap 1.6-2.7 s, online 0.1-0.3 s, history 0.1-0.3 s), offsets and commit about 0.2 s. The first
  batch took 8.5-8.9 s (planning 4.2 s, state 5.2 s, online 1.6 s, history 1.8 s);
* the batch's values are computed once (cached, then written to Redis and appended to the history): those two
  writes were 0.3-0.5 s of a batch, a Spark job each. A small batch is now collected to the driver once and
  both go from there (:func:`write_values`): the features catch-up over 2,000 customers x 12 days (8 batches
  of both groups, alternating runs in one process, load 3.0-3.5) took 17.6, 19.4, 18.2 s and 31.5, 34.9,
  32.0 CPU s of the machine, against 20.9, 20.0, 19.5 s and 38.7, 35.4, 34.6 CPU s before;
* with :class:`TileProcessor`'s body made a no-op (rows read, no state, no output; load 2.9) a batch took
  1.85 s (planning 0.25 s, foreachBatch 1.38 s): the operator's Python work per entity (three round trips to
  the state server per entity: its key, ``get``, ``update``; the JSON state; the fold) is about 1.0-1.2 s
  of a 3 s batch, and reading, joining, ``to_json``, the shuffle and the operator's runner about 1.4 s;
* the fold alone in Python over the same rows (5 batches of 18.3k events): 0.27-0.80 s a batch, growing with
  the state (1.7 -> 8.3 kB per entity after 12 days): ``values`` 0.11-0.29 s, ``fold`` 0.10-0.21 s, loading
  the state 0.0-0.22 s;
* the stream-static join's table (2,849 customers rows), read and ranked in every batch: 0.26-0.53 s wall and
  0.46-0.95 CPU s in a batch job. Cached with a rebuild on a new Delta commit (commit c165ba6, reverted after
  it), planning fell from 0.22-0.28 to 0.08-0.11 s a batch (load 0.8-3.3; 0.47-0.53 -> 0.23-0.25 s at load
  6-7), but foreachBatch did not measurably change (the cached rows are still broadcast in every batch): the
  process tree's CPU for the 5 batches was 60.8, 65.3, 78.0, 70.8 s before and 63.4, 69.5, 67.5, 80.8 s with
  it (alternating runs, load 0.8-7.3), and ``python -m bench --only proactive --quick`` twice each at load 4-8
  could not tell them apart. It also made a batch join the rows current at the end of the batch before it, not
  at its planning: not kept.
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
from common.features.prepare import prepare
from common.features.snapshots import snapshot_latest
from common.features.tile_state import TileFolder, TileState
from common.features.windows import value_column, with_row_values
from common.lake.append import DRIVER_ROWS, driver_appendable
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


def tile_rows(spark: SparkSession, work: Paths, plan: GroupPlan, stream: DataFrame) -> DataFrame:
    """Bronze rows -> (entity, the event as JSON: µs, id and each feature's row value): the operator's input.

    Python rows cost per column: one text column keeps the operator's cost flat whatever the number of
    features.
    """
    prepared = with_row_values(plan, prepare(plan, stream, join_tables(spark, work, plan)))
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
            if not resolved:
                resolved.append(history_app_id(spark, feature_query_name(plan)))
            written, skipped = write_values(
                spark, plan, values, entities, write_online, work, resolved[0], batch_id, clock
            )
        finally:
            values.unpersist()
        _log_batch(BatchStats(plan.name, batch_id, entities, written, skipped, clock.total), clock)

    return handle


def write_vector_rows(
    spark: SparkSession,
    work: Paths,
    plan: GroupPlan,
    rows: DataFrame,
    entities: int,
    write_online: OnlineWriter,
    app_id: str,
    batch_id: int,
) -> None:
    """Another operator's rows of ``plan``'s features (entity key and :data:`OUT`, ``entities`` rows: the trigger
    operator that carries the group's tiles, common/triggers/shared_state.py) -> the online store and the
    offline history, as a batch of the group's own query writes them."""
    clock = Stopwatch()
    values = unpack_values(plan, rows).cache()
    try:
        written, skipped = write_values(spark, plan, values, entities, write_online, work, app_id, batch_id, clock)
    finally:
        values.unpersist()
    _log_batch(BatchStats(plan.name, batch_id, entities, written, skipped, clock.total), clock)


def _log_batch(stats: BatchStats, clock: Stopwatch) -> None:
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


def write_values(
    spark: SparkSession,
    plan: GroupPlan,
    values: DataFrame,
    entities: int,
    write_online: OnlineWriter,
    work: Paths,
    app_id: str,
    batch_id: int,
    clock: Stopwatch,
) -> tuple[int, int]:
    """A batch's values (cached, ``entities`` rows) -> the online store, then the offline history; returns
    the online store's (written, skipped as older).

    A small batch is collected to the driver once, as Arrow, and both writes go from there: the guarded Redis
    write (when the writer has ``write_arrow``) and a delta-rs append. On 2 cores every Spark job costs a few
    hundred milliseconds whatever its size, and the two writes were a job each (the executors' Redis write,
    then the collection for the append). A large batch, or a history off the local file system, is written
    by Spark as before.
    """
    path = history_path(work, plan)
    collected = None
    if entities <= DRIVER_ROWS and driver_appendable(path):
        collected = offline.with_storage_columns(plan, values).toArrow()
        clock.lap("collect")
    write_arrow = getattr(write_online, "write_arrow", None)
    if not plan.online:
        online = (0, 0)
    elif collected is not None and write_arrow is not None:
        online = write_arrow(plan, collected)
    else:
        # a few entities per task: every task of the online write opens its Redis connection and loads
        # its script, which cost more than the writes of a small batch's 4 shuffle partitions
        online = write_online(plan, values.coalesce(max(1, math.ceil(entities / ONLINE_ROWS_PER_TASK))))
    clock.lap("online")
    if collected is None or not offline.append_collected(collected, path, app_id, batch_id):
        offline.append(spark, plan, values, path, app_id, batch_id)
    clock.lap("history")
    return online


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
    """One streaming query per feature group (of ``groups``; None: every group), reading its bronze source as a
    Delta stream."""
    queries = []
    for name in list(plan.groups) if groups is None else groups:
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
            .foreachBatch(make_batch_handler(spark, work, group, write_online))
        )
        writer = writer.trigger(availableNow=True) if available_now else writer.trigger(processingTime=interval)
        with rocksdb_state_store(spark, enabled=stateful):
            queries.append(writer.start())
    return queries
