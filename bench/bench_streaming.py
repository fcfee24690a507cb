"""Streaming pipeline throughput: landing JSON -> bronze -> features -> Redis + Delta, on local[2]."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import local_spark, throwaway_keys

NAME = "streaming"


def run(quick: bool) -> list[dict[str, Any]]:
    throwaway_keys()
    from common.compile import compile_usecase
    from common.features.online_sink import spark_online_writer
    from common.features.streaming import start_feature_streams
    from common.generate import GenerateOptions, generate_landing
    from common.ingest.stream import ingest_source
    from common.redis_server import configured_or_throwaway
    from common.settings import Paths
    from common.spec import load_usecase

    customers, days = (2_000, 7) if quick else (20_000, 14)
    home = Path(tempfile.mkdtemp(prefix="loom-bench-stream-"))
    work = Paths(home)
    spec = load_usecase("churn")
    plan = compile_usecase(spec)
    summary = generate_landing(spec, work, GenerateOptions(customers=customers, days=days, rows_per_file=50_000))
    try:
        with local_spark("streaming") as spark, configured_or_throwaway() as url:
            started = time.perf_counter()
            reports = {name: ingest_source(spark, spec, name, work, "batch") for name in spec.sources}
            ingest_s = time.perf_counter() - started
            events = reports["events"].read

            started = time.perf_counter()
            queries = start_feature_streams(
                spark, work, plan, spark_online_writer(url), available_now=True, groups=["activity"]
            )
            for query in queries:
                query.awaitTermination()
            features_s = time.perf_counter() - started
            batches = len(queries[0].recentProgress)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    total = ingest_s + features_s
    note = f"{events:,} events ({customers:,} customers × {days} days), local[2], {batches} feature micro-batches"
    rows = [
        {"metric": "ingest: landing JSON -> bronze + quarantine", "value": round(events / ingest_s, 1)},
        {"metric": "features: bronze -> tiles -> Redis + Delta", "value": round(events / features_s, 1)},
        {"metric": "end to end (ingest + features)", "value": round(events / total, 1), "target": ">= 35000"},
    ]
    for row in rows:
        row.setdefault("target", None)
        row.update(unit="events/s", note=note)
    rows.append({"metric": "generated events", "value": summary.rows.get("events", events), "unit": "rows"})
    return rows
