"""One streaming query per events source that has triggers: bronze (Delta
stream) -> firings (stateful operator) -> scoring (foreachBatch, exactly once).

When the source feeds events groups of the triggers' entity, the operator holds their tiles too and each
firing carries those groups' values at its event (common/triggers/shared_state.py): scoring re-reads bronze
only for the model's other groups. When features and triggers run together (``loom stream``), the same
operator also emits those groups' vectors and the query writes them: their events are folded once, in one
query, not in a feature query and again here."""

from __future__ import annotations

from typing import Literal

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from common.compile.plan import Plan
from common.compile.triggers import TriggerPlan
from common.features.streaming import OnlineWriter
from common.lake.paths import bronze_path
from common.lake.stream_start import stream_start_options
from common.runtime.redis_server import connect
from common.runtime.state_store import rocksdb_state_store
from common.settings import Paths
from common.triggers.operator import STATE_LAYOUT, TRIGGERS_ONLY_LAYOUT, firings
from common.triggers.scoring import ModelResolver, VectorSink, make_firing_handler
from common.triggers.shared_state import carried_groups, firings_with_features


def triggers_by_source(plan: Plan) -> dict[str, list[TriggerPlan]]:
    out: dict[str, list[TriggerPlan]] = {}
    for trigger in plan.triggers.values():
        out.setdefault(trigger.source, []).append(trigger)
    return out


def features_in_trigger_queries(plan: Plan) -> list[str]:
    """The feature groups whose tiles the trigger queries carry (from the earliest bronze event): with
    ``write_features``, those queries write these groups' features."""
    return [g.name for triggers in triggers_by_source(plan).values() for g in carried_groups(plan, triggers)]


def start_trigger_streams(
    spark: SparkSession,
    work: Paths,
    plan: Plan,
    redis_url: str,
    *,
    available_now: bool = False,
    interval: str = "5 seconds",
    max_files_per_trigger: int | None = None,
    model_refresh_s: float = 0.0,
    starting: Literal["earliest", "latest"] = "earliest",
    resolver: ModelResolver | None = None,
    write_features: OnlineWriter | None = None,
) -> list[StreamingQuery]:
    """Start the trigger queries of ``plan`` (none when it declares no triggers).

    ``write_features``: the trigger queries also write the features of the groups they carry
    (:func:`features_in_trigger_queries`) to the online store with it, and to the offline history, so those
    groups' events are folded once; their own feature queries must then not run.

    ``starting="latest"`` makes a *first* start (no checkpoint yet) skip the events already in
    bronze: deploying triggers on an existing lake then scores and acts on new events only, not
    on weeks of history. Once a checkpoint exists it decides where the query resumes.
    ``resolver`` (default a new one, refreshed every ``model_refresh_s``) may come warmed (:meth:`ModelResolver.warm`).
    """
    queries = []
    resolver = resolver or ModelResolver(work, model_refresh_s)
    client = connect(redis_url)
    for source, triggers in triggers_by_source(plan).items():
        # a first start at "latest" has no history in its state: its firings' features are read from bronze
        groups = carried_groups(plan, triggers) if starting == "earliest" else []
        name = f"triggers_{source}_{STATE_LAYOUT if groups else TRIGGERS_ONLY_LAYOUT}"
        table, checkpoint = bronze_path(work, plan.usecase, source), work.checkpoint(plan.usecase, name)
        # forget (right to be forgotten) rewrites bronze files: skip those change commits, never fail on them
        reader = spark.readStream.format("delta").option("skipChangeCommits", "true")
        if starting == "latest":
            reader = reader.option("startingVersion", "latest")
        else:
            reader = reader.options(**stream_start_options(table, checkpoint))
        if max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", max_files_per_trigger)
        events = reader.load(table)
        app_id = f"loom-{plan.usecase}-{name}"  # with the checkpoint: see STATE_LAYOUT
        vectors = bool(groups) and write_features is not None
        fired = (
            firings_with_features(spark, work, groups, events, triggers, vectors)
            if groups
            else firings(events, triggers)
        )
        query_name = f"loom_{plan.usecase}_triggers_{source}"
        sink = VectorSink(spark, work, groups, write_features, query_name) if vectors else None
        carried = [g.name for g in groups]
        writer = (
            fired.writeStream.queryName(query_name)
            .option("checkpointLocation", checkpoint)
            .foreachBatch(make_firing_handler(spark, work, plan, triggers, client, resolver, app_id, carried, sink))
        )
        writer = writer.trigger(availableNow=True) if available_now else writer.trigger(processingTime=interval)
        with rocksdb_state_store(spark):  # transformWithState needs RocksDB
            queries.append(writer.start())
    return queries
