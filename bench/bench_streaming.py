"""Streaming pipeline throughput against a floor, in the same run, on the same generated data (local[2]).

* **floor**: a bare Structured Streaming query over the events' JSON landing files: typed columns ->
  watermark -> 1-hour windowed count and sum per entity -> ``foreachBatch`` (which only counts its rows).
  No validation, no Delta, no Redis: what Spark itself costs for these events here.
* **Loom**: ``ingest`` (landing JSON/CSV -> bronze + quarantine, every source), then the ``activity`` feature
  stream (bronze -> tiles -> Redis + offline history), each in micro-batches of ``FILES_PER_TRIGGER`` files.
* the ratio Loom / floor, the machine load at start, and where each part's batch time goes (the per-batch
  Stopwatch laps of the ingest and features log lines, summed).

The machine is shared with other agents' Spark jobs: read the figures with the load row.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import local_spark, machine_load_row, throwaway_keys
from bench.batch_log import batch_steps, captured

NAME = "streaming"
LOGGERS = {"ingest": "common.ingest.writer", "features": "loom.stream"}
FILES_PER_TRIGGER = 24


def _floor(spark: Any, folder: Path, checkpoint: Path) -> tuple[float, int]:
    """Seconds and micro-batches of the bare query over the events' JSON files."""
    from pyspark.sql import functions as F

    schema = "event_id string, customer_id string, event_type string, ts timestamp, amount double"
    stream = spark.readStream.option("maxFilesPerTrigger", FILES_PER_TRIGGER).format("text").load(str(folder))
    typed = stream.select(F.from_json("value", schema).alias("e")).select("e.*")
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


def run(quick: bool) -> list[dict[str, Any]]:
    throwaway_keys()
    from common.compile import compile_usecase
    from common.features.online_sink import spark_online_writer
    from common.features.streaming import start_feature_streams
    from common.generate import GenerateOptions, generate_landing
    from common.ingest.stream import ingest_source
    from common.runtime.redis_server import configured_or_throwaway
    from common.settings import Paths
    from common.spec import load_usecase

    rows: list[dict[str, Any]] = [machine_load_row(", shared with other agents' Spark jobs: figures are noisy")]
    customers, days = (2_000, 7) if quick else (20_000, 14)
    home = Path(tempfile.mkdtemp(prefix="loom-bench-stream-"))
    work = Paths(home)
    spec = load_usecase("churn")
    plan = compile_usecase(spec)
    summary = generate_landing(spec, work, GenerateOptions(customers=customers, days=days, rows_per_file=25_000))
    try:
        with local_spark("streaming") as spark, configured_or_throwaway() as url, captured(LOGGERS.values()) as capture:
            floor_s, floor_batches = _floor(spark, work.landing / spec.name / "events", home / "floor-checkpoint")
            started = time.perf_counter()
            reports = {
                name: ingest_source(spark, spec, name, work, "batch", max_files_per_trigger=FILES_PER_TRIGGER)
                for name in spec.sources
            }
            ingest_s = time.perf_counter() - started
            events = reports["events"].read

            started = time.perf_counter()
            queries = start_feature_streams(
                spark,
                work,
                plan,
                spark_online_writer(url),
                available_now=True,
                groups=["activity"],
                max_files_per_trigger=FILES_PER_TRIGGER,
            )
            for query in queries:
                query.awaitTermination()
            features_s = time.perf_counter() - started
            records = list(capture.records)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    total = ingest_s + features_s
    floor = events / floor_s
    loom = events / total
    note = f"{events:,} events ({customers:,} customers × {days} days), local[2], {FILES_PER_TRIGGER} files/trigger"
    rows += [
        {
            "metric": f"floor: JSON -> typed -> watermark -> 1h count+sum -> foreachBatch ({floor_batches} batches)",
            "value": round(floor, 1),
        },
        {"metric": "ingest: landing JSON -> bronze + quarantine", "value": round(events / ingest_s, 1)},
        {"metric": "features: bronze -> tiles -> Redis + Delta", "value": round(events / features_s, 1)},
        {"metric": "Loom end to end (ingest + features)", "value": round(loom, 1), "target": ">= 35000"},
    ]
    for row in rows[1:]:
        row.setdefault("target", None)
        row.update(unit="events/s", note=note)
    rows.append({"metric": "ratio Loom / floor", "value": round(loom / floor, 3), "unit": "x", "target": ">= 0.4"})
    for part, logger in LOGGERS.items():
        batches, steps = batch_steps(records, logger)
        shown = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in steps.items()) or "no batch lines"
        rows.append(
            {
                "metric": f"{part}: batch time by step ({batches} batches)",
                "value": round(sum(steps.values()), 1),
                "unit": "s",
                "target": None,
                "note": shown,
            }
        )
    rows.append({"metric": "generated events", "value": summary.rows.get("events", events), "unit": "rows"})
    return rows
