"""The whole streaming pipeline in catch-up (``availableNow``), timed part by part, and the bare floor query.

Shared by the ``streaming`` and ``proactive`` benchmarks, so both report, in one run on the same generated data:

* **the floor**: a bare Structured Streaming query over the events' JSON landing files: typed columns ->
  watermark -> 1-hour windowed count and sum per entity -> ``foreachBatch`` (which only counts its rows).
  No validation, no Delta, no Redis: what Spark itself costs for these events here;
* **Loom end to end**: ingest (landing JSON -> bronze + quarantine), features (bronze -> tiles -> Redis +
  offline history), triggers + scoring (bronze -> firings -> churn@champion -> predictions + actions + Redis),
  one part after the other, each timed; end to end = 1 / the sum of the parts' seconds per event;
* the ratio of the two, and where each part's batch time went (the per-batch Stopwatch laps, summed).
"""

from __future__ import annotations

import logging
import time
from datetime import date
from pathlib import Path
from typing import Any

from bench.batch_log import BatchCapture, ProgressCapture, batch_steps, progress_captured

MODEL = "churn"
LOGGERS = ("common.ingest.writer", "loom.stream", "loom.triggers")
PARTS = ("ingest", "features", "triggers")
FLOOR_SCHEMA = "event_id string, customer_id string, event_type string, ts timestamp, amount double"


def floor_query(spark: Any, folder: Path, checkpoint: Path, files_per_trigger: int | None) -> tuple[float, int]:
    """Seconds and micro-batches of the bare query over the events' JSON files in ``folder``."""
    from pyspark.sql import functions as F

    reader = spark.readStream.format("text")
    if files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", files_per_trigger)
    typed = reader.load(str(folder)).select(F.from_json("value", FLOOR_SCHEMA).alias("e")).select("e.*")
    windowed = (
        typed.withWatermark("ts", "10 minutes")
        .groupBy("customer_id", F.window("ts", "1 hour"))
        .agg(F.count("*").alias("n"), F.sum("amount").alias("amount"))
    )
    started = time.perf_counter()
    query = (
        windowed.writeStream.outputMode("update")
        .option("checkpointLocation", str(checkpoint))
        .foreachBatch(lambda batch, _id: batch.count())
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    return time.perf_counter() - started, len(query.recentProgress)


def floor_rows(events: int, floor_s: float, floor_batches: int, caught: dict[str, Any]) -> list[dict[str, Any]]:
    """The floor's rate over the landed events, and Loom's end to end against it."""
    floor = events / floor_s
    return [
        {
            "metric": f"floor: JSON -> typed -> watermark -> 1h count+sum -> foreachBatch ({floor_batches} batches)",
            "value": round(floor, 1),
            "unit": "events/s",
            "note": f"{events:,} landed events in {floor_s:.1f}s, the same files as the catch-up",
        },
        {
            "metric": "ratio Loom end to end / floor",
            "value": round(end_to_end(caught) / floor, 3),
            "unit": "x",
            "target": ">= 0.4",
            "note": "end to end = ingest + features + triggers and scoring, one after the other",
        },
    ]


def await_all(queries: list[Any]) -> list[Any]:
    for query in queries:
        query.awaitTermination()
        if query.exception() is not None:
            raise query.exception()
    return queries


def trigger_batches(records: list[logging.LogRecord]) -> list[tuple[int, int, float]]:
    """(batch id, firings, seconds) of each trigger batch line (args: id, firings, counts, ..., seconds, ...)."""
    return [
        (int(r.args[0]), int(r.args[1]), float(r.args[6]))
        for r in records
        if r.name == "loom.triggers" and isinstance(r.args, tuple) and len(r.args) > 6
    ]


def shown(steps: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in steps.items()) or "no batch lines"


def rewrite_event_ids(folder: Path, prefix: str) -> None:
    """Give the training log its own event ids: the generator numbers every run from 1, and bronze
    deduplicates by event_id, so the second log would otherwise be quarantined as replays."""
    for path in folder.glob("*.json"):
        path.write_text(path.read_text().replace('"event_id":"E', f'"event_id":"{prefix}'))


def prepare_champion(
    spark: Any, plan: Any, work: Any, customers: int, days: int, end: date
) -> tuple[Any, dict[str, float]]:
    """Training data -> bronze -> history -> churn@champion; returns the outcome and the seconds of each step.

    The feature and trigger queries do not run here: the timed catch-up processes these events too.
    """
    from common.features.backfill import backfill
    from common.generate import generate_landing
    from common.generate.churn import source_folders
    from common.generate.options import demo_options
    from common.ingest.stream import ingest_source
    from common.models.train import train_model

    spec = plan.spec
    laps: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal started
        laps[name] = time.perf_counter() - started
        started = time.perf_counter()

    generate_landing(spec, work, demo_options(end, customers=customers, days=days))
    rewrite_event_ids(source_folders(spec, work.landing / spec.name)["events"], "T")
    lap("generate")
    for name in spec.sources:
        ingest_source(spark, spec, name, work, "batch")
    lap("ingest")
    backfill(spark, work, plan)
    lap("backfill")
    outcome = train_model(spark, plan, MODEL, work)
    lap("train")
    return outcome, laps


def scored_rows(spark: Any, path: str) -> int:
    from pyspark.sql import functions as F

    from common.lake.delta import table_exists

    if not table_exists(spark, path):
        return 0
    return spark.read.format("delta").load(path).where(F.col("score").isNotNull()).count()


def catch_up(
    spark: Any,
    plan: Any,
    work: Any,
    url: str,
    capture: BatchCapture,
    files: int | None,
    parts: tuple[str, ...] = PARTS,
) -> dict[str, Any]:
    """The timed parts, one after the other; what each processed and took.

    Ingest reads the new log's files; features and triggers have not run yet, so they process every
    bronze event (the training data's too): each part's rate is over the events it processed.
    ``parts`` without ``"triggers"`` (no model trained): its time is 0 and nothing is scored.
    """
    from common.lake.paths import predictions_path

    stream_table = predictions_path(work, plan.usecase, "stream")
    actions_table = work.table(plan.usecase, "predictions", "actions")
    triggers = "triggers" in parts
    before = (scored_rows(spark, stream_table), scored_rows(spark, actions_table)) if triggers else (0, 0)
    capture.take()
    out: dict[str, Any] = {"triggers_s": 0.0, "trigger_batches": [], "scored": 0, "actions": 0}
    with progress_captured(spark) as progress:
        _timed_parts(spark, plan, work, url, capture, progress, files, out, triggers=triggers)
    if triggers:
        out["scored"] = scored_rows(spark, stream_table) - before[0]
        out["actions"] = scored_rows(spark, actions_table) - before[1]
    return out


def _progress(progress: ProgressCapture) -> tuple[int, dict[str, float]]:
    time.sleep(1.0)  # the listener bus delivers the last progress report after the query ended
    return progress.take()


def _timed_parts(
    spark: Any,
    plan: Any,
    work: Any,
    url: str,
    capture: BatchCapture,
    progress: ProgressCapture,
    files: int | None,
    out: dict[str, Any],
    *,
    triggers: bool = True,
) -> None:
    from common.features.online_sink import spark_online_writer
    from common.features.streaming import start_feature_streams
    from common.ingest.stream import ingest_source
    from common.lake.paths import bronze_path
    from common.triggers.stream import features_in_trigger_queries, start_trigger_streams

    spec = plan.spec
    # as `loom stream` runs them: with the triggers, their queries write the groups their operator folds
    carried = features_in_trigger_queries(plan) if triggers else []
    progress.take()
    started = time.perf_counter()
    reports = {
        name: ingest_source(spark, spec, name, work, "batch", max_files_per_trigger=files) for name in spec.sources
    }
    out["ingest_s"] = time.perf_counter() - started
    out["ingest"] = batch_steps(capture.records, "common.ingest.writer")
    out["events"] = reports["events"].read
    out["ingest_progress"] = _progress(progress)
    out["bronze"] = spark.read.format("delta").load(bronze_path(work, plan.usecase, "events")).count()
    capture.take()
    progress.take()

    started = time.perf_counter()
    own = [name for name in plan.groups if name not in carried]
    await_all(
        start_feature_streams(
            spark, work, plan, spark_online_writer(url), available_now=True, groups=own, max_files_per_trigger=files
        )
    )
    out["feature_groups"], out["carried_groups"] = own, carried
    out["features_s"] = time.perf_counter() - started
    out["features"] = batch_steps(capture.take(), "loom.stream")
    out["features_progress"] = _progress(progress)

    if not triggers:
        return
    started = time.perf_counter()
    writer = spark_online_writer(url) if carried else None
    await_all(
        start_trigger_streams(
            spark, work, plan, url, available_now=True, max_files_per_trigger=files, write_features=writer
        )
    )
    out["triggers_s"] = time.perf_counter() - started
    records = capture.take()
    out["trigger_batches"] = trigger_batches(records)
    out["triggers"] = batch_steps(records, "loom.triggers")
    out["trigger_vectors"] = batch_steps(records, "loom.stream")  # the carried groups' writes
    out["triggers_progress"] = _progress(progress)


def end_to_end(caught: dict[str, Any]) -> float:
    """Events/s through all parts: 1 / the sum of each part's seconds per event."""
    per_event = caught["ingest_s"] / caught["events"] + (caught["features_s"] + caught["triggers_s"]) / caught["bronze"]
    return 1.0 / per_event


def shown_progress(progress: tuple[int, dict[str, float]] | None) -> str:
    """The summed streaming progress phases of a part (its queries' micro-batches)."""
    if not progress:
        return "no progress reports"
    reports, phases = progress
    order = ("triggerExecution", "latestOffset", "getBatch", "queryPlanning", "addBatch", "walCommit", "commitOffsets")
    listed = [name for name in order if name in phases] + sorted(set(phases) - set(order))
    return f"{reports} progress reports: " + ", ".join(f"{name} {phases[name]:.1f}s" for name in listed)


def _carried_note(caught: dict[str, Any]) -> str:
    """What the trigger queries wrote of the features (``loom stream`` runs them so): their groups' batches."""
    carried = caught.get("carried_groups")
    if not carried:
        return ""
    batches, steps = caught.get("trigger_vectors") or (0, {})
    return f"the features of {' + '.join(carried)} written by the trigger query: {batches} batches, {shown(steps)}; "


def catch_up_rows(
    caught: dict[str, Any],
    outcome: Any,
    setup: dict[str, float],
    customers: int,
    days: int,
    files: int | None,
) -> list[dict[str, Any]]:
    events, bronze = caught["events"], caught["bronze"]
    total = caught["ingest_s"] + caught["features_s"] + caught["triggers_s"]
    ingest_batches, ingest_steps = caught["ingest"]
    feature_batches, feature_steps = caught["features"]
    firing_batches = caught["trigger_batches"]
    handler_s = sum(seconds for _, _, seconds in firing_batches)
    base = (
        f"{events:,} landed events ({customers:,} customers × {days} days), availableNow, "
        f"{files or 'all'} files per trigger"
    )
    processed = f"{bronze:,} bronze events (this log and the training data's) in {{:.1f}}s"
    per_batch = ", ".join(f"{n} in {s:.1f}s" for _, n, s in firing_batches)
    rows = [
        {
            "metric": "catch-up ingest: landing JSON -> bronze + quarantine",
            "value": round(events / caught["ingest_s"], 1),
            "unit": "events/s",
            "note": (
                f"{base}; {ingest_batches} batches (all sources): {shown(ingest_steps)}; "
                f"query phases: {shown_progress(caught.get('ingest_progress'))}"
            ),
        },
        {
            "metric": "catch-up features: bronze -> tiles -> Redis + Delta",
            "value": round(bronze / caught["features_s"], 1),
            "unit": "events/s",
            "note": (
                f"{processed.format(caught['features_s'])}; {feature_batches} batches "
                f"({' + '.join(caught.get('feature_groups') or ['every group'])}): "
                f"{shown(feature_steps)}; query phases: {shown_progress(caught.get('features_progress'))}"
            ),
        },
        {
            "metric": "catch-up triggers + scoring: bronze -> firings -> @champion -> Delta + Redis",
            "value": round(bronze / caught["triggers_s"], 1),
            "unit": "events/s",
            "note": (
                f"{processed.format(caught['triggers_s'])}; {len(firing_batches)} batches with firings, "
                f"foreachBatch {handler_s:.1f}s of {caught['triggers_s']:.1f}s; "
                f"firings per batch: {per_batch}; steps: {shown(caught['triggers'][1])}; "
                f"{_carried_note(caught)}"
                f"query phases: {shown_progress(caught.get('triggers_progress'))}"
            ),
        },
        {
            "metric": "catch-up end to end (ingest + features + triggers, one after the other)",
            "value": round(end_to_end(caught), 1),
            "unit": "events/s",
            "target": ">= 35000",
            "note": (
                f"1 / (sum of each part's seconds per event); parts took {total:.1f}s. Set-up, not timed (training data, model v{outcome.version}): "
                + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in setup.items())
            ),
        },
        {
            "metric": "catch-up firings scored (predictions/stream rows)",
            "value": caught["scored"],
            "unit": "firings",
            "note": f"{caught['actions']} actions (score >= threshold)",
        },
    ]
    return rows
