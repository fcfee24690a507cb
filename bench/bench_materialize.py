"""Online store: Spark -> Redis materialization with the event-time guard, and online reads.

Measures, against a real Redis ($REDIS_URL, or a redis-server started here):

* Spark materialization (``write_features_to_online_store``) of N entities × 50
  float features from a cached DataFrame: new keys, then a replay of the same
  rows (every key goes through the guard and is overwritten);
* the Python writer alone (no Spark), same data shape;
* reads of 50 features for 1 and for 100 entities: one MGET round trip plus
  decoding, p50 and p99 over a few thousand calls.

Targets are those of DESIGN.md §4 (reads: the online lookup is only part of
the whole-HTTP-prediction budget given as target; the MGET floor is in ``note``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from bench import local_spark, machine_load_row
from common.runtime.redis_server import configured_or_throwaway

NAME = "materialize"
FEATURES = 50
EVENT_TIME_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def _rate(rows: int, seconds: float) -> float:
    return round(rows / seconds, 1)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    array = np.asarray(samples) * 1000.0
    return round(float(np.percentile(array, 50)), 4), round(float(np.percentile(array, 99)), 4)


def _spark_rows(spark: Any, entities: int, usecase: str, url: str) -> list[dict[str, Any]]:
    from pyspark.sql import functions as F

    from common.online.materialize import write_features_to_online_store

    names = [f"f{i:02d}" for i in range(FEATURES)]
    frame = (
        spark.range(entities)
        .select(
            F.concat(F.lit("C"), F.col("id").cast("string")).alias("customer_id"),
            F.timestamp_micros(F.lit(EVENT_TIME_US) + F.col("id") % 1000).alias("event_time"),
            *[F.rand(seed=i).alias(name) for i, name in enumerate(names)],
        )
        .cache()
    )
    frame.count()  # materialize the cache: the timing below is the write, not the data generation

    def materialize(df: Any, version: int) -> tuple[float, Any]:
        start = time.perf_counter()
        result = write_features_to_online_store(
            df,
            usecase=usecase,
            version=version,
            group="activity",
            feature_names=names,
            entity_column="customer_id",
            event_time_column="event_time",
            redis_url=url,
            ttl_seconds=86_400,
        )
        return time.perf_counter() - start, result

    # Warm up (Python workers, their connections, the JIT) on other keys: the figures below are the
    # steady state of a long-running job, not its first seconds.
    materialize(frame, version=99)
    fresh_s, fresh = materialize(frame, version=1)
    replay_s, replay = materialize(frame, version=1)
    frame.unpersist()
    if fresh.written != entities or replay.written != entities:
        raise RuntimeError(f"materialization wrote {fresh} then {replay} of {entities} vectors")
    parts = frame.rdd.getNumPartitions()
    note = f"{entities} entities × {FEATURES} features, {parts} partitions, local[2], cached DataFrame"
    return [
        {
            "metric": "Spark -> Redis, new keys",
            "value": _rate(entities, fresh_s),
            "unit": "vectors/s",
            "target": ">= 100000",
            "note": note,
        },
        {
            "metric": "Spark -> Redis, replay (guard, overwrite)",
            "value": _rate(entities, replay_s),
            "unit": "vectors/s",
            "target": ">= 100000",
            "note": note,
        },
    ]


def _python_rows(store: Any, entities: int) -> list[dict[str, Any]]:
    from common.online import OnlineGroup

    names = tuple(f"f{i:02d}" for i in range(FEATURES))
    group = OnlineGroup("python_writer", names, ttl_seconds=86_400)
    keys = [f"P{i}" for i in range(entities)]
    values = np.random.default_rng(7).random((entities, FEATURES))
    times = np.full(entities, EVENT_TIME_US, dtype=np.int64)
    start = time.perf_counter()
    result = store.write(group, keys, values, times)
    seconds = time.perf_counter() - start
    if result.written != entities:
        raise RuntimeError(f"the Python writer wrote {result} of {entities} vectors")
    return [
        {
            "metric": "Python writer alone (one process)",
            "value": _rate(entities, seconds),
            "unit": "vectors/s",
            "target": None,
            "note": "floor here: pipelined SET 54k/s, multi-key Lua guard 66k/s",
        }
    ]


def _read_rows(store: Any, entities: int, quick: bool) -> list[dict[str, Any]]:
    rng = np.random.default_rng(11)
    keys = [f"C{i}" for i in range(entities)]
    rows: list[dict[str, Any]] = []
    for batch, iterations, target, floor in ((1, 3000, 2.5, 0.2), (100, 2000, 10.0, 0.85)):
        iterations = iterations // 10 if quick else iterations
        samples: list[float] = []
        for _ in range(iterations + 50):
            offset = int(rng.integers(0, entities - batch))
            wanted = keys[offset : offset + batch]
            start = time.perf_counter()
            result = store.read(wanted, ["activity"])
            samples.append(time.perf_counter() - start)
            if len(result) != batch:
                raise RuntimeError(f"bench read returned {len(result)} of {batch} vectors")
        p50, p99 = _percentiles(samples[50:])  # the first calls warm up the connection
        note = f"one MGET + decode, {iterations} calls; MGET floor p99 {floor} ms; target = whole HTTP budget"
        rows.append(
            {
                "metric": f"read {batch} {_entities(batch)} × 50 features p50",
                "value": p50,
                "unit": "ms",
                "target": None,
                "note": note,
            }
        )
        rows.append(
            {
                "metric": f"read {batch} {_entities(batch)} × 50 features p99",
                "value": p99,
                "unit": "ms",
                "target": f"<= {target}",
                "note": note,
            }
        )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Spark and Python write throughput, then read latency; ``quick`` shrinks everything 10×."""
    from common.online import OnlineGroup
    from common.online.redis_store import RedisOnlineStore

    entities = 20_000 if quick else 200_000
    usecase = f"bench{os.getpid()}"
    rows: list[dict[str, Any]] = [machine_load_row()]
    with configured_or_throwaway() as url:
        with local_spark("materialize") as spark:
            rows += _spark_rows(spark, entities, usecase, url)
        names = tuple(f"f{i:02d}" for i in range(FEATURES))
        with RedisOnlineStore(
            url, usecase=usecase, version=1, groups=[OnlineGroup("activity", names, ttl_seconds=86_400)]
        ) as store:
            rows += _python_rows(store, entities)
            rows += _read_rows(store, entities, quick)
            # Leave a shared Redis ($REDIS_URL) as we found it.
            for key_batch in _batched(store.client.scan_iter(match=f"loom:{usecase}:*", count=10_000), 10_000):
                store.client.unlink(*key_batch)
    return rows


def _batched(items: Any, size: int):
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _entities(count: int) -> str:
    return "entity" if count == 1 else "entities"
