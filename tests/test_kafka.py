"""The local Kafka broker and the producer (issue 16), against a real KRaft broker started by the tests.

* the broker of a process dies with it under SIGKILL, and while it lives a second broker on its folder
  is refused with the fix;
* a broker restarted on a folder finds its topics as they were left;
* ``loom kafka start|stop|status``: a broker that outlives the command, stopped by ``stop``;
* ``loom generate --to kafka`` writes every generated event record (the malformed ones too) to
  ``loom.churn.events``, keyed by customer id, in each key's file order, at the ``--rate`` asked;
* Spark's own Kafka source (the connector fetched by ``make setup``) reads the same records back.

The tests read from the offsets a topic had before they wrote, so they also pass against a shared
cluster named by ``LOOM_KAFKA_BOOTSTRAP``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyspark.sql import functions as F

from common.errors import StoreError
from common.generate import GenerateOptions, generate_landing, read_malformed_log
from common.generate.to_kafka import end_offsets, landing_records, publish, record_key, topic_name
from common.runtime.jars import artifact_of
from common.runtime.kafka_server import (
    BOOTSTRAP_ENV,
    KafkaServer,
    broker_answers,
    configured_or_throwaway,
    port_open,
)
from common.runtime.processes import alive
from common.settings import Paths
from common.spec import load_usecase

ROOT = Path(__file__).resolve().parents[1]
TOPIC = topic_name("churn", "events")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    return not alive(pid)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LOOM_"))}
    env.update(LOOM_HOME=str(home), **extra)
    return env


@pytest.fixture(scope="module")
def bootstrap() -> str:
    with configured_or_throwaway() as address:
        yield address


def _consume(address: str, topic: str, start: dict[int, int], expected: int, timeout: float = 30.0) -> list:
    """Every message of ``topic`` from the offsets ``start`` on (new partitions from 0), up to ``timeout``."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": address, "group.id": "loom-test-read", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in partitions])
        messages = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(messages) < expected:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
        # a moment more: nothing beyond the expected messages may arrive
        extra = consumer.poll(1.0)
        if extra is not None and extra.error() is None:
            messages.append(extra)
        return messages
    finally:
        consumer.close()


def test_helpers_name_topics_keys_and_jars():
    assert topic_name("churn", "events") == "loom.churn.events"
    assert record_key('{"customer_id": "C00000042", "amount": 1}', "customer_id") == b"C00000042"
    assert record_key("{not json", "customer_id") is None
    assert record_key('{"amount": 1}', "customer_id") is None
    assert record_key("[1, 2]", "customer_id") is None
    from common.runtime.kafka_server import new_cluster_id

    assert not any(new_cluster_id().startswith("-") for _ in range(2000))  # kafka-storage reads "-..." as an option
    assert artifact_of("kafka-clients-3.9.2.jar") == "kafka-clients"
    assert artifact_of("scala-parallel-collections_2.13-1.2.0.jar") == "scala-parallel-collections_2.13"
    assert artifact_of("zstd-jni-1.5.7-17.jar") == "zstd-jni"
    assert artifact_of("spark-sql-kafka-0-10_2.13-4.2.0.jar") == "spark-sql-kafka-0-10_2.13"
    assert artifact_of("spark-avro_2.13-4.2.0.jar") == "spark-avro_2.13"
    # a JSON value goes into an Avro field of its own type only (as ingestion would take it from JSON)
    from common.generate.avro import AvroEncoder

    encoder = AvroEncoder(ROOT / "metadata" / "churn" / "events.avsc")
    good = {"event_id": "E1", "customer_id": "C1", "event_type": "payment", "ts": "2026-01-01T10:00:00Z"}
    assert encoder.encode(json.dumps({**good, "amount": 12}))  # an integer is a number
    for bad in ({"amount": "12"}, {"amount": True}, {"ts": "yesterday"}, {"ts": 1767261600}, {"event_id": 7}):
        assert encoder.encode(json.dumps({**good, **bad})) is None, bad
    assert encoder.encode("{not json") is None and encoder.encode("[1, 2]") is None
    assert artifact_of("netty-transport-native-epoll-4.1.118.Final-linux-x86_64.jar") == "netty-transport-native-epoll"


def test_set_up_fetched_the_connector_without_duplicating_pyspark_jars(tmp_path, monkeypatch):
    import pyspark

    from common.runtime.jars import KAFKA_VERSION, kafka_broker_libs, kafka_connector_jars
    from common.runtime.spark import session_jars, write_submit_properties

    names = {artifact_of(jar.name): jar.name for jar in kafka_connector_jars()}
    assert names["spark-sql-kafka-0-10_2.13"] == f"spark-sql-kafka-0-10_2.13-{pyspark.__version__}.jar"
    assert names["spark-avro_2.13"] == f"spark-avro_2.13-{pyspark.__version__}.jar"  # from_avro, same Spark
    assert {"kafka-clients", "commons-pool2", "spark-token-provider-kafka-0-10_2.13"} <= set(names)
    shipped = {artifact_of(jar.name) for jar in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    assert not shipped & set(names)  # one version of each library on Spark's classpath
    assert (kafka_broker_libs() / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
    assert set(kafka_connector_jars()) <= set(session_jars())
    assert all(
        str(jar) in write_submit_properties(tmp_path / "spark.conf").read_text() for jar in kafka_connector_jars()
    )
    monkeypatch.setenv("LOOM_SPARK_KAFKA", "0")
    assert not set(kafka_connector_jars()) & set(session_jars())


def test_the_broker_of_a_process_dies_with_it_and_guards_its_folder(tmp_path):
    from confluent_kafka import Producer

    folder = tmp_path / "kafka"
    code = (
        "import sys, time; from pathlib import Path; from common.runtime.kafka_server import KafkaServer; "
        "s = KafkaServer(directory=Path(sys.argv[1])).start(); print(s.process.pid, s.port, flush=True); "
        "time.sleep(600)"
    )
    env = {k: v for k, v in os.environ.items() if k != BOOTSTRAP_ENV}
    owner = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT, env=env, stdout=subprocess.PIPE)
    try:
        line = owner.stdout.readline().decode().split()
        assert len(line) == 2, f"the owner did not start a broker (exit {owner.poll()})"
        broker_pid, port = int(line[0]), int(line[1])
        assert broker_answers(f"127.0.0.1:{port}")
        # only on the loopback interface
        listening = Path("/proc/net/tcp").read_text().lower()
        assert f"0100007f:{port:04x}" in listening and f"00000000:{port:04x}" not in listening
        # a second broker on the folder is refused, with the fix, and leaves the first one alone
        with pytest.raises(StoreError, match=r"in use by another Kafka broker .*loom kafka start"):
            KafkaServer(directory=folder, lock_wait_s=0.5).start()
        assert broker_answers(f"127.0.0.1:{port}")
        producer = Producer({"bootstrap.servers": f"127.0.0.1:{port}"})
        producer.produce("loom.test.kept", value=b"kept")
        assert producer.flush(30) == 0
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=10)
        assert _gone_within(broker_pid, 30), f"broker {broker_pid} outlived its owner killed by SIGKILL"
        assert not port_open(port)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    # the lock went with the broker: the next broker starts on the folder and finds the topic as it was left
    with KafkaServer(directory=folder, lock_wait_s=1.0) as again:
        kept = _consume(again.bootstrap, "loom.test.kept", {}, expected=1)
    assert [m.value() for m in kept] == [b"kept"]


def test_loom_kafka_start_status_stop(tmp_path):
    def loom(*args: str) -> subprocess.CompletedProcess:
        # `loom kafka start|stop` through the console script's parser; `status` through the job's module
        # (the same code, without importing every job: 0.7 s instead of 2 s)
        command = ["jobs.cli", "kafka"] if args[0] != "status" else ["jobs.local_kafka"]
        return subprocess.run(
            [sys.executable, "-m", *command, *args],
            cwd=ROOT,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        assert loom("status").returncode == 1
        started = loom("start")
        assert started.returncode == 0, started.stderr
        address = re.search(rf"^{BOOTSTRAP_ENV}=(127\.0\.0\.1:\d+)$", started.stdout, re.M).group(1)
        assert broker_answers(address)  # it outlived `loom kafka start`
        status = loom("status")
        assert status.returncode == 0 and f"{BOOTSTRAP_ENV}={address}" in status.stdout
        pid = int((tmp_path / "kafka" / "pid").read_text())
        stopped = loom("stop")
        assert stopped.returncode == 0 and "kafka: stopped" in stopped.stdout
        assert _gone_within(pid, 5) and not broker_answers(address, timeout=0.5)
    finally:
        loom("stop")


def test_loom_generate_to_kafka_sends_every_event_keyed_in_order_at_the_rate(tmp_path, bootstrap):
    before = end_offsets(bootstrap, TOPIC)
    landing = tmp_path / "landing"
    rate = 300.0
    args = ["--usecase", "churn", "--customers", "20", "--days", "1", "--out", str(landing)]
    args += ["--malformed-rate", "0.1", "--to", "kafka", "--rate", str(rate)]
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "generate", *args],
        cwd=ROOT,
        env=_env(tmp_path, **{BOOTSTRAP_ENV: bootstrap}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = list(landing_records(landing / "events"))
    assert len(lines) > 20
    assert any(entry["source"] == "events" for entry in read_malformed_log(landing))  # bad records are sent too
    sent = re.search(r"^(\d+) messages in ([\d.]+) s", done.stdout, re.M)
    assert int(sent.group(1)) == len(lines)
    assert float(sent.group(2)) >= (len(lines) - 1) / rate  # paced: message i leaves no earlier than i / rate

    messages = _consume(bootstrap, TOPIC, before, expected=len(lines))
    values = [m.value().decode() for m in messages]
    assert sorted(values) == sorted(lines)  # every record once, malformed ones included, nothing more
    for message in messages:
        assert message.key() == record_key(message.value().decode(), "customer_id")
    # one customer's events keep their order: one key, one partition
    by_key: dict[bytes, list[str]] = {}
    for message in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        if message.key() is not None:
            by_key.setdefault(message.key(), []).append(message.value().decode())
    for key, sent_values in by_key.items():
        assert sent_values == [line for line in lines if record_key(line, "customer_id") == key]
    assert len({m.partition() for m in messages if m.key() == messages[0].key()}) == 1


def test_spark_kafka_source_reads_back_what_the_producer_wrote(spark, tmp_path, bootstrap):
    spec = load_usecase("churn")
    out = tmp_path / "landing"
    generate_landing(spec, Paths(tmp_path), GenerateOptions(customers=15, days=1, seed=11), out=out)
    before = end_offsets(bootstrap, TOPIC)
    summary = publish(spec, out, bootstrap)
    lines = list(landing_records(out / "events"))
    assert summary.messages == {TOPIC: len(lines)}

    partitions = end_offsets(bootstrap, TOPIC)
    starting = json.dumps({TOPIC: {str(p): before.get(p, 0) for p in partitions}})
    frame = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("subscribe", TOPIC)
        .option("startingOffsets", starting)
        .option("endingOffsets", "latest")
        .load()
    )
    rows = frame.selectExpr("CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value", "topic").collect()
    assert sorted(r.value for r in rows) == sorted(lines)
    assert {r.topic for r in rows} == {TOPIC}
    for row in rows:
        assert (row.key.encode() if row.key is not None else None) == record_key(row.value, "customer_id")


def test_clients_take_sasl_settings_from_the_environment_and_never_show_the_password(spark, tmp_path, monkeypatch):
    """A SASL/PLAIN broker: the producer and Spark's Kafka source log in with the user and the password file
    of the environment; a wrong password is one clear error that does not show it."""
    from common.errors import ConfigError
    from common.runtime.kafka_server import client_settings, spark_options

    password = "s3cret-for-this-test-only"
    secret_file = tmp_path / "kafka-password"
    secret_file.write_text(password + "\n")
    monkeypatch.delenv(BOOTSTRAP_ENV, raising=False)
    monkeypatch.setenv("LOOM_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("LOOM_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("LOOM_KAFKA_SASL_USERNAME", "loom")
    with pytest.raises(ConfigError, match="LOOM_KAFKA_SASL_PASSWORD"):
        client_settings("127.0.0.1:9092")
    monkeypatch.setenv("LOOM_KAFKA_SASL_PASSWORD_FILE", str(secret_file))

    spec = load_usecase("churn")
    out = tmp_path / "landing"
    generate_landing(spec, Paths(tmp_path), GenerateOptions(customers=10, days=1, seed=5), out=out)
    lines = list(landing_records(out / "events"))
    with KafkaServer(sasl_users={"loom": password}) as server:
        assert not broker_answers(server.bootstrap, settings={"bootstrap.servers": server.bootstrap}, timeout=1.0)
        summary = publish(spec, out, server.bootstrap)
        assert summary.messages == {TOPIC: len(lines)} and password not in summary.render()
        options = spark_options(server.bootstrap)
        frame = spark.read.format("kafka").options(**options).option("subscribe", TOPIC).load()
        assert sorted(r.value for r in frame.selectExpr("CAST(value AS STRING) AS value").collect()) == sorted(lines)

        secret_file.write_text("wrong-password\n")
        with pytest.raises(StoreError, match="cannot reach Kafka") as refused:
            publish(spec, out, server.bootstrap, connect_timeout=3.0)
        assert "wrong-password" not in str(refused.value) and password not in str(refused.value)


# --- format: kafka sources: the spec, and ingestion from a real broker compared with files ---------------

KAFKA_ENV = "LOOM_TEST_KAFKA_BOOTSTRAP"  # a per-source variable name (bootstrap_env), as a user may choose
SAMPLE = ROOT / "metadata" / "churn" / "sources.kafka.yaml.sample"


def _kafka_churn(folder: Path, topic: str, **settings) -> Path:
    """churn with its ``events`` source replaced by the Kafka sample, on ``topic`` (``settings`` override the
    sample's kafka keys; a value None removes the key)."""
    import yaml

    from tests.spec_helpers import mutated_churn

    events = yaml.safe_load(SAMPLE.read_text())["sources"]["events"]
    events["kafka"].update(topic=topic, bootstrap_env=KAFKA_ENV, **settings)
    events["kafka"] = {key: value for key, value in events["kafka"].items() if value is not None}

    def mutate(documents):
        documents["sources.yaml"]["sources"]["events"] = events

    return mutated_churn(folder, mutate)


def test_the_kafka_sample_loads_and_bad_kafka_settings_name_the_field_and_the_fix(tmp_path):
    import yaml

    from common.errors import SpecError
    from common.spec.sources import DEFAULT_BOOTSTRAP_ENV
    from tests.spec_helpers import mutated_churn

    assert DEFAULT_BOOTSTRAP_ENV == BOOTSTRAP_ENV  # the spec's default is the variable every Loom client reads
    spec = load_usecase(_kafka_churn(tmp_path / "ok", "loom.churn.events"))
    events = spec.sources["events"]
    assert events.format == "kafka" and events.path is None
    assert events.kafka.topic_list == ["loom.churn.events"] and events.kafka.bootstrap_env == KAFKA_ENV
    # the sample's source is the file source's twin: same columns, keys and time
    files = load_usecase("churn").sources["events"]
    assert (events.columns, events.id, events.event_time) == (files.columns, files.id, files.event_time)

    def error(**changes) -> str:
        sample = yaml.safe_load(SAMPLE.read_text())["sources"]["events"]
        for key, value in changes.items():
            target, _, name = key.rpartition("__")
            node = sample[target] if target else sample
            if value is None:
                node.pop(name, None)
            else:
                node[name] = value

        def mutate(documents):
            documents["sources.yaml"]["sources"]["events"] = sample

        with pytest.raises(SpecError) as caught:
            load_usecase(mutated_churn(tmp_path / "bad", mutate))
        return str(caught.value)

    message = error(kafka__topic=None)
    assert "sources.events.kafka" in message and "exactly one of topic" in message and "fix" in message
    message = error(kafka__value_format="avro", kafka__avro_schema="no-such.avsc")
    assert "sources.events.kafka.avro_schema" in message and "no-such.avsc does not exist" in message
    assert "needs avro_schema" in error(kafka__value_format="avro")
    assert "applies to value_format avro only" in error(kafka__avro_schema="events.avsc")
    message = error(kafka__value_format="avro", kafka__avro_schema="sources.yaml")
    assert "sources.events.kafka.avro_schema" in message and "is not JSON" in message
    message = error(kafka__value_format="avro", kafka__avro_schema=str(ROOT / "metadata" / "schema.json"))
    assert "is not an Avro schema" in message or "not of a record" in message
    message = error(kafka__bootstrap_env="my_servers")
    assert "sources.events.kafka.bootstrap_env" in message and "'my_servers'" in message
    message = error(kafka__startng_offsets="latest")
    assert "unknown key 'startng_offsets'" in message and "starting_offsets" in message
    assert "value not allowed" in error(kafka__starting_offsets="2026-01-01")
    message = error(kafka__broker_timeout="forever")
    assert (
        "sources.events.kafka.broker_timeout" in message and "'forever'" in message and "e.g. '30 minutes'" in message
    )
    assert "remove path" in error(path="{landing}/events")
    assert "needs a kafka: section" in error(kafka=None)
    assert "kind 'events'" in error(kind="table")
    assert "applies to format kafka only" in error(format="json", path="{landing}/events")


def test_a_broker_counts_as_gone_only_when_no_bootstrap_server_accepts_a_connection(tmp_path, monkeypatch):
    import socket

    from common.ingest.broker_health import broker_outage, unreachable
    from common.ingest.readers import kafka_timeouts

    with socket.create_server(("127.0.0.1", 0)) as listening:
        alive_at = f"127.0.0.1:{listening.getsockname()[1]}"
        with socket.create_server(("127.0.0.1", 0)) as closing:
            gone_at = f"127.0.0.1:{closing.getsockname()[1]}"
        assert not unreachable(alive_at) and not unreachable(f"{gone_at}, PLAINTEXT://{alive_at}")
        assert unreachable(gone_at) and unreachable("no-port-here") and unreachable("")
        spec = load_usecase(_kafka_churn(tmp_path / "metadata", "loom.test.probe", broker_timeout="5 seconds"))
        monkeypatch.setenv(KAFKA_ENV, alive_at)
        assert broker_outage("events", spec.sources["events"]) is None
        monkeypatch.setenv(KAFKA_ENV, gone_at)
        message = str(broker_outage("events", spec.sources["events"]))
        assert gone_at in message and "broker_timeout (5 seconds)" in message and "Fix:" in message
        assert broker_outage("customers", spec.sources["customers"]) is None  # files: no broker to lose
    assert kafka_timeouts(spec.sources["events"].kafka) == {
        "kafka.request.timeout.ms": "5000",
        "kafka.default.api.timeout.ms": "5000",
        "fetchOffset.numRetries": "1",
        "kafkaConsumer.pollTimeoutMs": "5000",
    }
    default = load_usecase(_kafka_churn(tmp_path / "default", "loom.test.probe")).sources["events"].kafka
    assert kafka_timeouts(default)["kafka.request.timeout.ms"] == "30000"  # one request never waits longer
    assert kafka_timeouts(default)["kafka.default.api.timeout.ms"] == "180000"


@contextmanager
def _kafka_bootstrap(address: str) -> Iterator[None]:
    """Point every Loom client at ``address`` ($LOOM_KAFKA_BOOTSTRAP) for the block."""
    os.environ[KAFKA_ENV] = address
    try:
        yield
    finally:
        os.environ.pop(KAFKA_ENV, None)


def _redis_vectors(url: str) -> dict[bytes, bytes]:
    from common.runtime.redis_server import connect

    client = connect(url)
    try:
        return {key: client.get(key) for key in client.scan_iter(match="loom:churn:*", count=1000)}
    finally:
        client.close()


def _bronze_rows(spark, work: Paths, source: str) -> list:
    from common.ingest.validation import SOURCE_FILE
    from common.ingest.writer import INGESTED_AT
    from common.lake.paths import bronze_path

    frame = spark.read.format("delta").load(bronze_path(work, "churn", source)).drop(SOURCE_FILE, INGESTED_AT)
    return sorted(frame.collect(), key=repr)


def _quarantine_rows(spark, work: Paths, source: str) -> list[tuple]:
    frame = spark.read.format("delta").load(work.table("churn", "quarantine", source))
    return sorted((row.raw, row.reason) for row in frame.collect())


def _history_rows(spark, work: Paths, plan) -> dict[str, list]:
    from common.features import offline

    # _write_order: when a row was written (the latest write of a key wins), not what was written
    return {
        name: sorted(offline.read_history(spark, work, group).drop(offline.WRITE_ORDER).collect(), key=repr)
        for name, group in plan.groups.items()
    }


def _pipeline_run(spark, redis_url: str, spec, work: Paths, *, check: bool) -> SimpleNamespace:
    """catch_up (ingest + features) of ``spec`` on ``work`` with a clean Redis; what it left in Redis and the
    consistency of every group when ``check`` (checked while Redis holds this run's vectors)."""
    from common.compile import compile_usecase
    from common.features.consistency import check_group
    from common.features.online_sink import open_store
    from common.pipeline import catch_up
    from common.runtime.redis_server import connect

    connect(redis_url).flushdb()
    plan = compile_usecase(spec)
    reports = {r.source: r for r in catch_up(spark, plan, work, redis_url, parts=("ingest", "features"))}
    consistency = {}
    store = open_store(list(plan.groups.values()), redis_url)
    try:
        consistency = {name: check_group(spark, work, group, store) for name, group in plan.groups.items() if check}
    finally:
        store.close()
    return SimpleNamespace(
        work=work, plan=plan, reports=reports, redis=_redis_vectors(redis_url), consistency=consistency
    )


@pytest.fixture(scope="module")
def files_and_kafka(spark, redis_url, bootstrap, tmp_path_factory):
    """One small generated world (15 customers, 1 day, 5 % malformed) ingested twice, in process: its events
    from landing files, then the same events from a Kafka topic (the other sources from the same files)."""
    root = tmp_path_factory.mktemp("kafka-vs-files")
    spec = load_usecase("churn")
    files_work, kafka_work = Paths(root / "files"), Paths(root / "kafka")
    options = GenerateOptions(customers=15, days=1, seed=23, malformed_rate=0.05)
    generate_landing(spec, files_work, options)
    topic = f"loom.test.events-{uuid.uuid4().hex[:8]}"
    sent = publish(spec, files_work.landing / "churn", bootstrap, topics={"events": topic}, partitions=2)
    for name in ("customers", "outcomes"):
        shutil.copytree(files_work.landing / "churn" / name, kafka_work.landing / "churn" / name)
    kafka_spec = load_usecase(_kafka_churn(root / "metadata", topic))
    with _kafka_bootstrap(bootstrap):
        files = _pipeline_run(spark, redis_url, spec, files_work, check=False)
        kafka = _pipeline_run(spark, redis_url, kafka_spec, kafka_work, check=True)
    yield SimpleNamespace(files=files, kafka=kafka, topic=topic, sent=sent.messages[topic], kafka_spec=kafka_spec)
    from common.runtime.redis_server import connect

    connect(redis_url).flushdb()  # the worker's Redis: the next module's world reuses these customer ids


def test_kafka_and_files_give_the_same_bronze_history_and_redis_vectors(spark, files_and_kafka):
    files, kafka = files_and_kafka.files, files_and_kafka.kafka
    events_read = kafka.reports["events"]
    assert events_read.read == files_and_kafka.sent == files.reports["events"].read  # every message, once
    assert kafka.reports["events"].quarantined > 0, "the generated world has malformed events"
    for source in ("customers", "events", "outcomes"):
        assert _bronze_rows(spark, kafka.work, source) == _bronze_rows(spark, files.work, source), source
        assert _quarantine_rows(spark, kafka.work, source) == _quarantine_rows(spark, files.work, source), source
    assert _history_rows(spark, kafka.work, kafka.plan) == _history_rows(spark, files.work, files.plan)
    assert kafka.redis and kafka.redis == files.redis
    assert set(kafka.consistency) == set(kafka.plan.groups)
    for name, report in kafka.consistency.items():
        assert report.entities_checked > 0 and report.ok and report.entities_mismatched == 0, (name, report.examples)


def test_kafka_and_files_give_the_same_predictions(spark, files_and_kafka, monkeypatch, tmp_path):
    """A churn model, trained once on the file-fed lake, scores every customer of both lakes as of the end of
    the generated day (``loom score``'s batch scoring: point-in-time features -> pyfunc -> predictions table):
    the same customers, the same scores.

    The module's world is small (15 labels, one churner): the split's guard (20 labels of both classes a side)
    is lifted for this model, and the model is churn's with a logistic regression after a constant imputer
    (scikit-learn's HistGradientBoosting refuses a feature column without any value, which 12 training rows
    have), so that its scores vary with the features, as a comparison needs. A bigger world would cost every
    test of the module."""
    from datetime import UTC, datetime

    from common.compile import compile_usecase
    from common.models import split
    from common.models.scoring import score_batch
    from common.models.train import train_model
    from tests.spec_helpers import mutated_churn

    def linear(documents):
        model = documents["models.yaml"]["models"]["churn"]
        imputer = {"strategy": "constant", "fill_value": 0.0, "keep_empty_features": True}
        model["preprocessing"] = [{"class": "sklearn.impute.SimpleImputer", "params": imputer}]
        model["preprocessing"].append({"class": "sklearn.preprocessing.StandardScaler"})
        model["estimator"] = {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 1000}}

    monkeypatch.setattr(split, "_check_sides", lambda *_: None)
    files, kafka = files_and_kafka.files, files_and_kafka.kafka
    plan = compile_usecase(load_usecase(mutated_churn(tmp_path, linear)))
    outcome = train_model(spark, plan, "churn", files.work)
    assert outcome.version == 1 and outcome.promoted
    (kafka.work.home / "mlflow.db").symlink_to(files.work.mlflow_db)  # one registry: the same model version
    at = datetime(2026, 1, 2, tzinfo=UTC)

    def predictions(side) -> list[tuple]:
        ref, written, _ = score_batch(spark, side.plan, "churn@champion", at, side.work)
        assert ref.version == outcome.version
        return sorted((row.customer_id, row.prediction_ts, row.score) for row in written.collect())

    from_files, from_kafka = predictions(files), predictions(kafka)
    assert len(from_files) >= 15 and len({score for _, _, score in from_files}) > 1
    assert from_kafka == from_files


def test_kafka_records_carry_their_topic_partition_and_offset_as_origin(spark, files_and_kafka):
    from common.lake.paths import bronze_path

    topic = files_and_kafka.topic
    work = files_and_kafka.kafka.work
    origins = [r._source_file for r in spark.read.format("delta").load(bronze_path(work, "churn", "events")).collect()]
    quarantined = [
        r.source_file for r in spark.read.format("delta").load(work.table("churn", "quarantine", "events")).collect()
    ]
    pattern = re.compile(rf"^kafka:{re.escape(topic)}/([01])/(\d+)$")
    assert all(pattern.match(origin) for origin in origins + quarantined)
    # each message once, in bronze or in quarantine
    assert len(set(origins + quarantined)) == len(origins + quarantined) == files_and_kafka.sent


def test_malformed_kafka_values_are_quarantined_with_their_offsets_and_the_batch_goes_on(
    spark, bootstrap, files_and_kafka, tmp_path
):
    """Not JSON, wrong types, a missing required field, a 1 MB string, an empty value: each is quarantined with its
    topic, partition and offset, in the batch that also takes the good records. This source takes its event time
    from the message's timestamp (``event_time_from: kafka_timestamp``): the values carry no ``ts``."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from common.ingest.stream import ingest_source

    topic = f"loom.test.malformed-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"max.message.bytes": str(4 << 20)})])[topic].result(30)
    good = {"event_id": "E1", "customer_id": "C1", "event_type": "payment", "amount": 12.5}
    values = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "event_id": "E2", "amount": "twelve"}),
        json.dumps({"customer_id": "C1", "event_type": "payment"}),
        json.dumps({**good, "event_id": "E3", "channel": "x" * (1 << 20)}),
        "",
        json.dumps({**good, "event_id": "E4"}),
        json.dumps(good),  # a replay of E1
    ]
    stamp_ms = 1767261600123  # 2026-01-01T10:00:00.123Z
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 4 << 20, "enable.idempotence": True})
    for offset, value in enumerate(values):
        producer.produce(topic, value=value.encode(), key=b"C1", timestamp=stamp_ms + offset)
    assert producer.flush(30) == 0

    spec = load_usecase(_kafka_churn(tmp_path / "metadata", topic, event_time_from="kafka_timestamp"))
    work = Paths(tmp_path / "home")
    with _kafka_bootstrap(bootstrap):
        report = ingest_source(spark, spec, "events", work, "batch")
    assert (report.read, report.accepted, report.batches) == (len(values), 2, 1)

    bronze = spark.read.format("delta").load(work.table("churn", "bronze", "events"))
    accepted = {r.event_id: r for r in bronze.collect()}
    assert set(accepted) == {"E1", "E4"}
    assert accepted["E1"]._source_file == f"kafka:{topic}/0/0"
    assert accepted["E1"].ts.isoformat().startswith("2026-01-01T10:00:00.123")
    assert accepted["E4"].ts.isoformat().startswith("2026-01-01T10:00:00.129")
    quarantine = spark.read.format("delta").load(work.table("churn", "quarantine", "events"))
    reasons = {r.source_file: r.reason for r in quarantine.collect()}
    assert reasons == {
        f"kafka:{topic}/0/1": "malformed JSON",
        f"kafka:{topic}/0/2": "column amount: twelve is not a double",
        f"kafka:{topic}/0/3": "missing required column event_id",
        f"kafka:{topic}/0/4": "column channel: value " + "x" * 200 + "... not in allowed values",
        f"kafka:{topic}/0/5": "malformed JSON",
        f"kafka:{topic}/0/7": "duplicate event_id",
    }
    big = quarantine.where(F.col("source_file").endswith("/4")).first().raw
    assert len(big) > 1 << 20  # the record itself, kept whole for whoever repairs it


AVRO_SCHEMA = ROOT / "metadata" / "churn" / "events.avsc"


def test_avro_values_from_loom_generate_give_the_files_bronze_and_bad_bytes_are_quarantined(
    spark, bootstrap, files_and_kafka, tmp_path
):
    """``value_format: avro``: ``loom generate --to kafka`` on the use case whose events source reads Avro writes
    the module's world (same options, same records) in Avro with the source's schema file (relative to the
    metadata); bytes that are no Avro record (a truncated record, text, a record sent with another schema,
    an empty value) follow. Batch ingestion decodes them with Spark's ``from_avro``: bronze equals the
    file-fed bronze row for row; the records the schema cannot hold (malformed JSON, a value of the wrong type)
    and the bad bytes are quarantined as malformed Avro with their topic, partition and offset; every other
    quarantined record has the file run's reason; a record of nulls is a record (missing its required columns)."""
    import base64
    import io

    import fastavro
    from confluent_kafka import Producer

    from common.ingest.readers import MALFORMED_AVRO_PREFIX
    from common.ingest.stream import ingest_source

    topic = f"loom.test.avro-{uuid.uuid4().hex[:8]}"
    folder = _kafka_churn(tmp_path / "metadata", topic, value_format="avro", avro_schema="events.avsc")
    shutil.copy(AVRO_SCHEMA, folder / "events.avsc")
    spec = load_usecase(folder)
    assert spec.sources["events"].kafka.avro_schema_file == folder / "events.avsc"

    args = ["--usecase", str(folder), "--customers", "15", "--days", "1", "--seed", "23", "--malformed-rate", "0.05"]
    args += ["--out", str(tmp_path / "landing"), "--to", "kafka", "--partitions", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "generate", *args],
        cwd=ROOT,
        env=_env(tmp_path, **{BOOTSTRAP_ENV: bootstrap, KAFKA_ENV: bootstrap}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    sent = files_and_kafka.sent
    assert re.search(rf"^{re.escape(topic)}\s+{sent}$", done.stdout, re.M), done.stdout
    not_encoded = int(re.search(r"(\d+) records the Avro schema cannot hold", done.stdout).group(1))
    kinds = [e["kind"] for e in read_malformed_log(tmp_path / "landing") if e["source"] == "events"]
    assert not_encoded == sum(kind in ("malformed_json", "wrong_type") for kind in kinds) > 0

    schema = fastavro.parse_schema(json.loads(AVRO_SCHEMA.read_text()))

    def encoded(record: dict) -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, record)
        return buffer.getvalue()

    late = {"event_id": "E-avro-1", "customer_id": "C00000001", "event_type": "payment", "amount": 5.25}
    good = encoded({**late, "ts": datetime_utc("2026-01-01T23:59:59.123456")})
    other_schema = {"type": "record", "name": "Other", "fields": [{"name": "id", "type": "long"}]}
    other = io.BytesIO()
    fastavro.schemaless_writer(other, fastavro.parse_schema(other_schema), {"id": 2**40})
    extra = [good, good[: len(good) // 2], b"plain text, no Avro", other.getvalue(), b"", encoded({})]
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for value in extra:
        producer.produce(topic, value=value, key=b"C00000001")
    assert producer.flush(30) == 0

    work = Paths(tmp_path / "home")
    with _kafka_bootstrap(bootstrap):
        report = ingest_source(spark, spec, "events", work, "batch")
    assert report.read == sent + len(extra)

    files = files_and_kafka.files
    bronze = _bronze_rows(spark, work, "events")
    added = [row for row in bronze if row.event_id == "E-avro-1"]
    assert [row for row in bronze if row.event_id != "E-avro-1"] == _bronze_rows(spark, files.work, "events")
    assert len(added) == 1 and added[0].ts.isoformat().startswith("2026-01-01T23:59:59.123456")

    quarantine = spark.read.format("delta").load(work.table("churn", "quarantine", "events")).collect()
    by_origin = {row.source_file: (row.raw, row.reason) for row in quarantine}
    assert len(by_origin) == len(quarantine)
    assert all(re.fullmatch(rf"kafka:{re.escape(topic)}/0/\d+", origin) for origin in by_origin)
    first_extra = sent
    bad_bytes = {f"kafka:{topic}/0/{first_extra + i}": extra[i] for i in (1, 2, 3, 4)}
    for origin, value in bad_bytes.items():
        raw, reason = by_origin.pop(origin)
        assert reason == "malformed Avro" and raw == MALFORMED_AVRO_PREFIX + base64.b64encode(value).decode()
    assert by_origin.pop(f"kafka:{topic}/0/{first_extra + 5}")[1] == "missing required column event_id"
    file_reasons = sorted(reason for _, reason in _quarantine_rows(spark, files.work, "events"))
    reasons = [reason for _, reason in by_origin.values()]
    assert reasons.count("malformed Avro") == not_encoded
    kept = sorted(reason for reason in reasons if reason != "malformed Avro")
    wrong_type = re.compile(r"^column \w+: .* is not a (string|long|int|double|boolean|timestamp|date)$")
    assert kept == sorted(r for r in file_reasons if r != "malformed JSON" and not wrong_type.match(r))


def datetime_utc(text: str):
    from datetime import UTC, datetime

    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _newest_offset_file(checkpoint: Path, since_ns: int) -> bool:
    """Whether the query planned a micro-batch (wrote an offsets file) since ``since_ns``."""
    folder = checkpoint / "offsets"
    return folder.is_dir() and any(p.stat().st_mtime_ns >= since_ns for p in folder.iterdir() if p.name.isdigit())


@pytest.mark.slow
@pytest.mark.spark
def test_loom_stream_from_kafka_killed_again_and_again_equals_a_clean_run(spark, bootstrap, files_and_kafka, tmp_path):
    """``loom stream --available-now --only ingest`` on the Kafka topic, a few messages a micro-batch, killed with
    SIGKILL (driver and JVM) five times at random points of its work and restarted, then run to the end: bronze
    and quarantine equal the clean in-process run's, every message is in exactly one of them (0 lost, 0 twice).

    Ingestion alone: it is what reads Kafka and owns the offsets; what comes after bronze is the same code for
    files and Kafka, and its restarts are tested by tests/test_proactive.py."""
    import random

    from tests.conftest import quick_jvm_env

    clean = files_and_kafka.kafka
    work = Paths(tmp_path / "home")
    for name in ("customers", "outcomes"):
        shutil.copytree(clean.work.landing / "churn" / name, work.landing / "churn" / name)
    folder = _kafka_churn(tmp_path / "metadata", files_and_kafka.topic, max_offsets_per_trigger=6)
    command = [sys.executable, "-m", "jobs.stream", "--usecase", str(folder), "--available-now", "--only", "ingest"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(LOOM_HOME=str(work.home), PYSPARK_PYTHON=sys.executable, **{KAFKA_ENV: bootstrap}, **quick_jvm_env())
    env.setdefault("REDIS_URL", "redis://127.0.0.1:1/0")  # ingestion alone writes no Redis
    checkpoint = Path(work.checkpoint("churn", "ingest_events"))
    chance = random.Random(16)
    kills = 0
    for attempt in range(8):
        since = time.time_ns()
        log = tmp_path / f"stream-{attempt}.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            deadline = time.monotonic() + 600
            while process.poll() is None and not _newest_offset_file(checkpoint, since):
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                time.sleep(0.05)
            time.sleep(chance.uniform(0.0, 3.0))  # somewhere in a batch: reading, validating, appending
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                kills += 1
            process.wait()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if kills == 5:
            break
    assert kills == 5, "the stream ended before it was killed five times: give it smaller batches"
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    for source in ("events", "customers", "outcomes"):
        assert _bronze_rows(spark, work, source) == _bronze_rows(spark, clean.work, source), source
        assert _quarantine_rows(spark, work, source) == _quarantine_rows(spark, clean.work, source), source
    bronze = spark.read.format("delta").load(work.table("churn", "bronze", "events")).select("_source_file")
    quarantine = spark.read.format("delta").load(work.table("churn", "quarantine", "events")).select("source_file")
    origins = [row[0] for row in bronze.union(quarantine).collect()]
    assert len(origins) == len(set(origins)) == files_and_kafka.sent  # 0 lost, 0 twice
    assert len(list((checkpoint / "commits").iterdir())) > 5  # it did run in many small batches


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.5)


@pytest.mark.slow
def test_a_broker_outage_is_waited_out_or_stops_the_job_clearly_and_nothing_is_lost(
    spark, tmp_path, monkeypatch, capsys
):
    """The broker of a running ``format: kafka`` ingestion stream goes away twice.

    A short outage (shorter than the source's ``broker_timeout``): the stream waits, then takes the messages
    sent after the broker is back on its folder and port. A longer one, under ``loom stream``: the job stops
    with one message naming the source, the broker and the fix (exit code 2, no stack trace); run again once the
    broker is back, it resumes from its checkpoint. Bronze holds every event once."""
    from confluent_kafka import Producer

    import jobs.stream
    from common.ingest.report import IngestReport
    from common.ingest.stream import start_ingest_stream, stop_gracefully
    from common.runtime.python_daemon import PRELOAD_ENV
    from jobs.runner import main_for

    topic = "loom.test.outage"
    folder = tmp_path / "broker"
    sent = 0

    def send(bootstrap: str, count: int) -> None:
        nonlocal sent
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        for number in range(sent, sent + count):
            event = {
                "event_id": f"E{number}",
                "customer_id": "C1",
                "event_type": "payment",
                "ts": "2026-01-01T10:00:00Z",
            }
            producer.produce(topic, value=json.dumps(event).encode(), key=b"C1")
        assert producer.flush(30) == 0
        sent += count

    server = KafkaServer(directory=folder).start()
    port, controller = server.port, server.controller_port
    query = None
    monkeypatch.setenv(KAFKA_ENV, server.bootstrap)
    try:
        send(server.bootstrap, 20)
        spec = load_usecase(_kafka_churn(tmp_path / "patient", topic, broker_timeout="1 minute"))
        report = IngestReport("events")
        work = Paths(tmp_path / "home")
        query = start_ingest_stream(spark, spec, "events", work, trigger_interval="1 second", report=report)
        _wait_for(lambda: report.read >= 20, 180, "the first 20 events")
        server.stop()
        time.sleep(3)  # several triggers find no broker
        assert query.isActive, query.exception()
        server = KafkaServer(directory=folder, port=port, controller_port=controller).start()
        send(server.bootstrap, 20)
        _wait_for(lambda: report.read >= 40 or not query.isActive, 240, "the 20 events sent after the restart")
        assert query.isActive, query.exception()
        stop_gracefully(query)
        assert report.failure is None and (report.read, report.accepted) == (40, 40)

        # the long outage, under the job (the same checkpoint, a short broker_timeout): the broker stops once
        # the job has run a batch, and stays away
        metadata = _kafka_churn(tmp_path / "impatient", topic, broker_timeout="5 seconds")
        job_ended, trouble = threading.Event(), []
        commits = Path(work.checkpoint("churn", "ingest_events")) / "commits"
        committed = len([p for p in commits.iterdir() if p.name.isdigit()])

        def stop_broker_once_streaming() -> None:
            try:
                deadline = time.monotonic() + 180
                while not (commits / str(committed)).exists():  # the job's first batch
                    if time.monotonic() > deadline or job_ended.is_set():
                        raise AssertionError("the job ran no batch within 180 s")
                    time.sleep(0.2)
                server.stop()
                if not job_ended.wait(180):
                    raise AssertionError("the job did not stop within 180 s of the outage")
            except BaseException as error:  # reported by the test's thread; SIGTERM ends the job (stop_on_signals)
                trouble.append(error)
                os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setenv("LOOM_HOME", str(work.home))
        monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # ingestion alone writes no Redis
        # the job sets it; it must not outlive the test (set first: a delenv of an absent variable records nothing)
        monkeypatch.setenv(PRELOAD_ENV, "")
        monkeypatch.delenv(PRELOAD_ENV)
        stopper = threading.Thread(target=stop_broker_once_streaming, daemon=True)
        send(server.bootstrap, 5)  # a first batch for the job to take before the broker goes
        capsys.readouterr()
        stopper.start()
        stream = ["--usecase", str(metadata), "--only", "ingest", "--trigger-interval", "1 second"]
        code = main_for("stream", jobs.stream, stream)
        job_ended.set()
        stopper.join()
        assert not trouble, trouble
        err = capsys.readouterr().err
        assert code == 2, err[-3000:]
        message = [line for line in err.splitlines() if line.startswith("loom stream: error:")]
        assert len(message) == 1 and "Traceback" not in err, err[-3000:]
        for part in ("'events'", f"${KAFKA_ENV}", f"127.0.0.1:{port}", "broker_timeout (5 seconds)", "Fix:"):
            assert part in message[0], message[0]

        server = KafkaServer(directory=folder, port=port, controller_port=controller).start()
        send(server.bootstrap, 20)
        assert main_for("stream", jobs.stream, ["--usecase", str(metadata), "--only", "ingest", "--available-now"]) == 0
        ids = [
            row.event_id for row in spark.read.format("delta").load(work.table("churn", "bronze", "events")).collect()
        ]
        assert sorted(ids) == sorted(f"E{n}" for n in range(sent)) and sent == 65
    finally:
        if query is not None and query.isActive:
            query.stop()
        server.stop()
