"""Events from Kafka beside events from files, in one run on local[2]: catch-up throughput and freshness.

Both sides run the whole streaming pipeline of the proactive bench (ingest, features, triggers + scoring by
churn@champion) on the same events; only the events source differs: landing JSON files, or a ``format: kafka``
variant of the churn ``events`` source reading JSON messages from a topic of a local KRaft broker (the
customers and outcomes sources stay files on both sides).

Set-up (not timed): the proactive bench's training data (ingested, backfilled, churn@champion trained) in the
files side's work folder; its bronze is copied to the Kafka side's, which shares the model registry, so both
start from the same state. A later event log lands as files, and the same records are published to the topic
(``loom generate --to kafka``'s producer) before anything is timed.

1. **Catch-up** (``availableNow``, part after part, :func:`bench.catch_up.catch_up`): files side, then Kafka
   side; each part's rate, and end to end. Micro-batches: ``FILES_PER_TRIGGER`` hourly files, or about as many
   messages (``max_offsets_per_trigger``: the log's events per day).
2. **Freshness** at 10,000 events/s (``RATE``): the pipeline runs continuously (1 s triggers) while the
   proactive bench's live writer lands events, with outage -> call pairs that fire the trigger, as files
   (files side) or as messages produced to the topic by a confluent-kafka producer at the same rate (Kafka
   side); freshness = the prediction in Redis - the firing event's time, p50 and p99 after a warm-up. Live,
   neither side caps its micro-batches (every file there is; every message there is).

The sides run one after the other (each its own Redis database), files first. The machine is shared with
other agents' Spark jobs: the load at start is reported; compare the two sides of one run, not runs.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from bench import local_spark, machine_load_row, throwaway_keys
from bench.batch_log import captured
from bench.bench_proactive import RATE, _freshness, _freshness_rows, _LiveWriter
from bench.catch_up import LOGGERS, catch_up, catch_up_rows, end_to_end, prepare_champion

NAME = "kafka"
FILES_PER_TRIGGER = 24  # catch-up micro-batches of the files side: a day of hourly landing files
TOPIC = "loom.bench.events"
BOOTSTRAP_ENV = "LOOM_BENCH_KAFKA_BOOTSTRAP"  # the Kafka source's bootstrap_env: the bench's own broker


class _KafkaLiveWriter(_LiveWriter):
    """The proactive bench's live writer, its events produced to a topic instead of landed as files: each tick's
    events leave as soon as they are made (``linger.ms`` 5), keyed by customer; the producer's deliveries are
    checked at the end."""

    bootstrap = ""

    def __init__(self, folder: Path, *args: Any) -> None:
        from confluent_kafka import Producer

        from common.runtime.kafka_server import client_settings

        super().__init__(folder, *args)
        self.producer = Producer({**client_settings(self.bootstrap), "linger.ms": 5, "enable.idempotence": True})
        self.failures = 0

    def _delivered(self, err: Any, _message: Any) -> None:
        if err is not None:
            self.failures += 1

    def _land(self, lines: list[str]) -> None:
        from common.generate.to_kafka import record_key

        for line in lines:
            while True:
                try:
                    self.producer.produce(
                        TOPIC, value=line.encode(), key=record_key(line, "customer_id"), on_delivery=self._delivered
                    )
                    break
                except BufferError:
                    self.producer.poll(0.01)
        self.producer.poll(0)
        self.files += 1
        self.written += len(lines)

    def run(self) -> None:
        super().run()
        remaining = self.producer.flush(30)
        self.producer = None  # dropped: no client left to reconnect once the bench's broker stops
        if (remaining or self.failures) and self.error is None:
            self.error = RuntimeError(f"{remaining + self.failures} events were not written to {TOPIC}")


def _kafka_spec(spec: Any, max_offsets: int | None) -> Any:
    """The churn use case with its events source read from ``TOPIC`` (JSON values)."""
    from common.spec.usecase import UseCase

    document = spec.model_dump(mode="json", exclude_none=True)
    events = document["sources"]["events"]
    events.pop("path")
    kafka = {"topic": TOPIC, "bootstrap_env": BOOTSTRAP_ENV}
    if max_offsets:
        kafka["max_offsets_per_trigger"] = max_offsets
    events.update(format="kafka", kafka=kafka)
    return UseCase.model_validate(document)


def _redis_db(url: str, db: int) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{db}"))


def _sizes(quick: bool) -> dict[str, Any]:
    """Customers × days of the training data and of the log; seconds of writing and of drain of the live runs."""
    if quick:
        return {"train": (500, 8), "log": (1_000, 2), "files": None, "live": (15.0, 20.0), "warmup": 3.0}
    return {"train": (500, 8), "log": (2_000, 2), "files": FILES_PER_TRIGGER, "live": (40.0, 40.0), "warmup": 10.0}


def _side_rows(side: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        row["metric"] = f"{side}: {row['metric']}"
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Catch-up throughput and freshness at 10,000 events/s, from files and from Kafka, in one run."""
    throwaway_keys()
    from common.compile import compile_usecase
    from common.generate import GenerateOptions, generate_landing
    from common.generate.to_kafka import publish
    from common.runtime.kafka_server import configured_or_throwaway as kafka_broker
    from common.runtime.redis_server import configured_or_throwaway
    from common.settings import Paths
    from common.spec import load_usecase

    size = _sizes(quick)
    (train_customers, train_days), (log_customers, log_days) = size["train"], size["log"]
    log_end = datetime.now(UTC).date() - timedelta(days=2)  # no log firing within the live firings' cool-down
    log_start = log_end - timedelta(days=log_days)
    home = Path(tempfile.mkdtemp(prefix="loom-bench-kafka-"))
    files_work, kafka_work = Paths(home / "files"), Paths(home / "kafka")
    spec = load_usecase("churn")
    plan = compile_usecase(spec)
    rows: list[dict[str, Any]] = [machine_load_row(", shared with other agents' Spark jobs: figures are noisy")]
    try:
        with (
            local_spark("kafka") as spark,
            configured_or_throwaway() as url,
            kafka_broker() as bootstrap,
            captured(LOGGERS) as capture,
        ):
            os.environ[BOOTSTRAP_ENV] = bootstrap
            _KafkaLiveWriter.bootstrap = bootstrap
            outcome, setup = prepare_champion(spark, plan, files_work, train_customers, train_days, log_start)
            shutil.copytree(files_work.lake / "churn" / "bronze", kafka_work.lake / "churn" / "bronze")
            kafka_work.mlflow_db.symlink_to(files_work.mlflow_db)  # one registry: the same champion
            options = GenerateOptions(customers=log_customers, days=log_days, start=log_start, rows_per_file=50_000)
            summary = generate_landing(spec, files_work, options, overwrite=True)
            landing = files_work.landing / spec.name
            for name in ("customers", "outcomes"):
                shutil.copytree(landing / name, kafka_work.landing / spec.name / name)
            per_day = summary.rows["events"] // log_days if size["files"] else None
            kafka_plan = compile_usecase(_kafka_spec(spec, per_day))
            started = time.perf_counter()
            sent = publish(kafka_plan.spec, landing, bootstrap, partitions=2)
            publish_s = time.perf_counter() - started

            sides = {  # plan, work folder, Redis database, live writer
                "files": (plan, files_work, _redis_db(url, 0), None),
                "kafka": (kafka_plan, kafka_work, _redis_db(url, 1), _KafkaLiveWriter),
            }
            # live, the files side takes every file there is each micro-batch: the Kafka side every message
            live_plans = {"files": plan, "kafka": compile_usecase(_kafka_spec(spec, None))}
            caught = {}
            for side, (side_plan, work, redis, _) in sides.items():
                caught[side] = catch_up(spark, side_plan, work, redis, capture, size["files"])
                rows += _side_rows(
                    side, catch_up_rows(caught[side], outcome, setup, log_customers, log_days, size["files"])
                )
            rows.append(
                {
                    "metric": "catch-up end to end: Kafka / files",
                    "value": round(end_to_end(caught["kafka"]) / end_to_end(caught["files"]), 3),
                    "unit": "x",
                    "note": (
                        f"{sent.messages[TOPIC]:,} messages published before the timed parts "
                        f"({publish_s:.1f}s, 2 partitions); Kafka batches of {per_day or 'all'} messages, "
                        f"files batches of {size['files'] or 'all'} files"
                    ),
                }
            )
            capture.take()
            customers = [f"C{i:08d}" for i in range(1, log_customers + 1)]
            pairs = list(customers)
            random.Random(5).shuffle(pairs)
            seconds, drain = size["live"]
            fresh = {}
            for side, (_, work, redis, writer_class) in sides.items():
                fresh[side] = _freshness(
                    spark,
                    live_plans[side],
                    work,
                    redis,
                    (side[0], customers, pairs, float(RATE), seconds),
                    size["warmup"],
                    drain,
                    writer_class=writer_class,
                )
                rows += _side_rows(side, _freshness_rows("target", fresh[side], capture.take(), size["warmup"], drain))
    finally:
        os.environ.pop(BOOTSTRAP_ENV, None)
        shutil.rmtree(home, ignore_errors=True)
    for row in rows:
        row.setdefault("target", None)
        if row["metric"].startswith("kafka: "):  # the shared rows' words for files
            row["metric"] = row["metric"].replace("landing files, Python writer", "Kafka messages, Python producer")
            row["metric"] = row["metric"].replace("landing JSON", "Kafka JSON messages")
            row["note"] = (row.get("note") or "").replace("landed events", "published events")
    return rows
