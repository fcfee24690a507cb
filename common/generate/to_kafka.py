"""Publishing generated events to Kafka: ``loom generate --usecase churn --to kafka``.

The generator writes its landing files as always (the batch jobs and the file stream read them); then
every source of ``kind: events`` and ``format: json`` (or ``format: kafka``, whose records the generator
writes to ``<out>/<source>``) is replayed into a Kafka topic, record by record,
in arrival order (files by name, lines in file order), the malformed records included: they are what
an upstream system would send, and what the stream must quarantine. So the same events reach Loom
through files and through Kafka, which is what a files-versus-Kafka comparison needs.

* Cluster: a ``format: kafka`` source's own ``bootstrap_env`` when it names one (:func:`sources_by_cluster`),
  else ``$LOOM_KAFKA_BOOTSTRAP`` or a local broker (``jobs/generate.py``).
* Topic: ``loom.<usecase>.<source>`` (``loom.churn.events``), a ``format: kafka`` source's own (its first
  topic), created when missing with
  ``partitions`` partitions (replication 1 on a one-node broker, else the cluster's default).
* Key: the source entity's key (``customer_id``), so one entity's events keep their order within one
  partition; a record without a readable key (malformed JSON) is sent without a key.
* Value: the JSON line as written to the landing file (UTF-8); for a ``format: kafka`` source with
  ``value_format: avro``, the record in Avro's binary encoding with the source's schema
  (:mod:`common.generate.avro`), and a record the schema cannot hold (malformed JSON, a value of the wrong
  type) as its JSON text, which the stream quarantines as malformed Avro. Timestamp: the producer's clock.
* Delivery: an idempotent producer with ``acks=all``; every delivery report is checked, and the
  publish fails with a :class:`StoreError` naming the first failure if any message was not written.
* ``rate``: replay at a fixed rate of messages per second (for freshness measurements): message ``i``
  leaves no earlier than ``start + i / rate``; without it, as fast as the broker takes them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError, StoreError
from common.generate.landing import records_folder
from common.runtime.kafka_server import client_settings
from common.spec.sources import DEFAULT_BOOTSTRAP_ENV, Source
from common.spec.usecase import UseCase

FLUSH_TIMEOUT_S = 60.0


def topic_name(usecase: str, source: str) -> str:
    """The topic of one events source: ``loom.<usecase>.<source>``."""
    return f"loom.{usecase}.{source}"


def kafka_sources(spec: UseCase) -> list[str]:
    """The sources published to Kafka: events sources of JSON records, and Kafka sources."""
    return [
        name for name, source in spec.sources.items() if source.kind == "events" and source.format in ("json", "kafka")
    ]


def source_topic(spec: UseCase, name: str) -> str:
    """The topic a source is published to: a Kafka source's first topic, else ``loom.<usecase>.<source>``."""
    source = spec.sources[name]
    return source.kafka.topic_list[0] if source.kafka is not None else topic_name(spec.name, name)


def sources_by_cluster(spec: UseCase, default: Callable[[], str]) -> dict[str, list[str]]:
    """The sources to publish, grouped by the bootstrap servers each one's readers use.

    A ``format: kafka`` source that names its own ``bootstrap_env`` goes to that variable's cluster (the
    variable must be set: the stream reads it from there too, :func:`common.ingest.readers.kafka_bootstrap_of`);
    every other source goes to ``default()``, called once and only when some source needs it."""
    clusters: dict[str, list[str]] = {}
    default_bootstrap: str | None = None
    for name in kafka_sources(spec):
        source = spec.sources[name]
        if source.kafka is not None and source.kafka.bootstrap_env != DEFAULT_BOOTSTRAP_ENV:
            from common.ingest.readers import kafka_bootstrap_of  # Spark's modules only on this path

            bootstrap = kafka_bootstrap_of(source)
        else:
            default_bootstrap = default_bootstrap or default()
            bootstrap = default_bootstrap
        clusters.setdefault(bootstrap, []).append(name)
    return clusters


def value_encoder(source: Source):
    """``line -> (value bytes, encoded)``: the JSON line itself, or its Avro encoding for an Avro source (a
    record the schema cannot hold: its JSON text, not encoded)."""
    if source.kafka is None or source.kafka.value_format != "avro":
        return lambda line: (line.encode("utf-8"), True)
    from common.generate.avro import AvroEncoder

    encoder = AvroEncoder(source.kafka.avro_schema_file)

    def encode(line: str) -> tuple[bytes, bool]:
        value = encoder.encode(line)
        return (value, True) if value is not None else (line.encode("utf-8"), False)

    return encode


def landing_records(folder: Path) -> Iterator[str]:
    """The records of a landing folder in arrival order: visible files by name, non-empty lines in order."""
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_"))):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                line = line.rstrip("\n")
                if line:
                    yield line


def record_key(line: str, key_column: str) -> bytes | None:
    """The entity key of a JSON record, or None when the record has none (it is still sent)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    value = record.get(key_column) if isinstance(record, dict) else None
    return str(value).encode() if value is not None and not isinstance(value, (dict, list)) else None


@dataclass
class PublishSummary:
    """What one publish sent: messages per topic, how long it took and at what rate."""

    bootstrap: str
    messages: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rate: float | None = None
    not_encoded: dict[str, int] = field(default_factory=dict)  # topic -> records sent as JSON text to an Avro topic

    def render(self) -> str:
        lines = [f"kafka {self.bootstrap}", f"{'topic':<28}{'messages':>12}"]
        lines += [f"{topic:<28}{count:>12,}" for topic, count in self.messages.items()]
        total = sum(self.messages.values())
        achieved = total / self.seconds if self.seconds > 0 else 0.0
        target = f", target {self.rate:,.0f}/s" if self.rate else ""
        lines.append(f"{total:,} messages in {self.seconds:.2f} s ({achieved:,.0f}/s{target})")
        lines += [
            f"{topic}: {count:,} records the Avro schema cannot hold, sent as their JSON text (malformed Avro)"
            for topic, count in self.not_encoded.items()
            if count
        ]
        return "\n".join(lines)


def ensure_topics(bootstrap: str, topics: list[str], partitions: int, timeout: float = 15.0) -> None:
    """Create the topics that do not exist yet (existing ones keep their partitions)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_settings(bootstrap))
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as err:
        raise StoreError(
            f"cannot reach Kafka at {bootstrap} ({err.args[0].str()}). Fix: start a broker (`loom kafka start`) "
            "or correct LOOM_KAFKA_BOOTSTRAP"
        ) from None
    missing = [t for t in topics if t not in metadata.topics]
    if not missing:
        return
    replication = 1 if len(metadata.brokers) == 1 else -1  # -1: the cluster's default.replication.factor
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication) for t in missing],
        operation_timeout=timeout,
    )
    for topic, future in futures.items():
        try:
            future.result(timeout)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another producer made it meanwhile
                raise StoreError(f"could not create Kafka topic {topic!r} at {bootstrap}: {err.args[0].str()}") from err


def end_offsets(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """Partition -> the offset the next message of ``topic`` will get (empty when the topic does not exist)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**client_settings(bootstrap), "group.id": "loom-offsets", "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return {}
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1] for p in metadata.partitions
        }
    finally:
        consumer.close()


class _Pacer:
    """Holds message ``i`` until ``start + i / rate`` (no wait without a rate)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.start = time.perf_counter()

    def wait(self, index: int) -> None:
        if self.rate:
            delay = self.start + index / self.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)


def publish(
    spec: UseCase,
    out: Path,
    bootstrap: str,
    *,
    rate: float | None = None,
    partitions: int = 2,
    sources: list[str] | None = None,
    connect_timeout: float = 15.0,
    topics: dict[str, str] | None = None,
) -> PublishSummary:
    """Send the landing records of ``spec``'s JSON events sources and Kafka sources under ``out`` to their topics.

    ``connect_timeout``: how long the first request (the topics' metadata) may wait for the cluster.
    ``topics``: source name -> topic, for sources sent elsewhere than ``loom.<usecase>.<source>`` (e.g. the
    topic a ``format: kafka`` variant of the use case reads)."""
    from confluent_kafka import Producer

    if rate is not None and rate <= 0:
        raise ConfigError(f"--rate {rate!r} is not a positive number of events per second. Fix: pass e.g. --rate 1000")
    if partitions < 1:
        raise ConfigError(f"--partitions {partitions!r} must be at least 1. Fix: pass e.g. --partitions 2")
    names = sources if sources is not None else kafka_sources(spec)
    if not names:
        raise ConfigError(
            f"use case {spec.name!r} has no source of kind 'events' and format 'json' or 'kafka' to publish to Kafka. "
            "Fix: publish a use case with JSON events sources, or use --to files"
        )
    topics = {name: (topics or {}).get(name, source_topic(spec, name)) for name in names}
    ensure_topics(bootstrap, list(topics.values()), partitions, timeout=connect_timeout)
    failures: list[str] = []

    def delivered(err, _message) -> None:
        if err is not None:
            failures.append(err.str())

    producer = Producer(
        {
            **client_settings(bootstrap),
            "enable.idempotence": True,  # acks=all, no duplicates from the producer's own retries
            "linger.ms": 0 if rate else 20,  # paced: each message leaves at its time; else batch for throughput
            "compression.type": "lz4",
        }
    )
    summary = PublishSummary(bootstrap=bootstrap, rate=rate)
    pacer = _Pacer(rate)
    sent = 0
    for name in names:
        source = spec.sources[name]
        key_column = spec.entities[source.entity].key if source.entity in spec.entities else None
        encode = value_encoder(source)
        count = not_encoded = 0
        for line in landing_records(Path(records_folder(name, source, out))):
            pacer.wait(sent)
            key = record_key(line, key_column) if key_column else None
            value, encoded = encode(line)
            not_encoded += not encoded
            while True:
                try:
                    producer.produce(topics[name], value=value, key=key, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
            producer.poll(0)
            count += 1
            sent += 1
        summary.messages[topics[name]] = count
        summary.not_encoded[topics[name]] = not_encoded
    remaining = producer.flush(FLUSH_TIMEOUT_S)
    summary.seconds = time.perf_counter() - pacer.start
    if remaining or failures:
        first = failures[0] if failures else f"{remaining} messages still queued after {FLUSH_TIMEOUT_S:.0f} s"
        raise StoreError(
            f"{len(failures) + remaining} of {sent} messages were not written to Kafka at {bootstrap}: {first}. "
            "Fix: check that the broker is up (`loom kafka status`) and publish again"
        )
    return summary
