"""Apache Kafka for Loom: the broker named by ``LOOM_KAFKA_BOOTSTRAP``, or one we start ourselves.

* ``LOOM_KAFKA_BOOTSTRAP`` set (``host:port[,host:port]``): every Loom client uses that cluster;
* otherwise the persistent local broker of ``loom kafka start`` (``$LOOM_HOME/kafka``) if it is running;
* otherwise a broker of this process on a free port, stopped when the process exits, with its data in
  ``$LOOM_HOME/kafka`` (so the next job finds the topics as this one left them), or without a work
  folder in a temporary folder.

The broker is Apache Kafka in KRaft mode, one JVM that is both broker and controller, run from the jars
``make setup`` fetched from Maven Central (:func:`common.runtime.jars.fetch_kafka`). Its folder holds
``server.properties`` and ``log4j2.properties`` (written at each start), ``data/`` (the topics and the
metadata log, formatted once with a new cluster id, like ``kafka-storage format``), ``server.log`` and
``output.log`` (the JVM's own output: a failed start is explained there).

It listens on 127.0.0.1 only (PLAINTEXT: nothing leaves the machine), on two free ports: clients and
the controller. The guards are the Redis helper's (:mod:`common.runtime.redis_server`): the parent-death
signal makes the broker of a process die with it even under SIGKILL, and an ``flock`` held by the broker
itself keeps a second broker off its folder. The JVM is kept small for a 2-core machine: a 128-512 MB
heap, the serial collector and the quick C1 compiler (``LOOM_KAFKA_JVM_OPTIONS`` replaces these flags).
With those default flags it maps its classes from a class-data-sharing archive (``.cache/cds/kafka-*.jsa``)
that ``make setup`` makes once by running a broker (:func:`build_archive`); a start then takes about half
the time. A missing or stale archive is skipped without a word.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError, StoreError
from common.runtime.jars import fetch_kafka, kafka_broker_libs, kafka_broker_ready, kafka_cache
from common.runtime.processes import LOCK_WAIT_S, alive, free_port, lock_folder, spawn_guarded, terminate
from common.runtime.secrets import read_secret

BOOTSTRAP_ENV = "LOOM_KAFKA_BOOTSTRAP"
JVM_OPTIONS_ENV = "LOOM_KAFKA_JVM_OPTIONS"
JVM_OPTIONS = "-Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData -XX:+ExitOnOutOfMemoryError"
START_TIMEOUT_S = 90.0  # a cold JVM on a loaded 2-core machine takes 5-15 s; a broken one fails long before
STOP_TIMEOUT_S = 30.0  # a controlled shutdown flushes the logs and closes the quorum
_LOCK_FIX = (
    "wait for that job to end, or run `loom kafka start` once so that every job shares one broker, "
    f"or set {BOOTSTRAP_ENV}"
)

# Small thread pools and one partition by default: a single-node broker on a small machine. The internal
# topics need a replication factor of 1 on one node.
_SETTINGS = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "num.partitions": "1",
    "auto.create.topics.enable": "true",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    "log.cleaner.threads": "1",
}

_LOG4J = """status = error
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {folder}/server.log
appender.file.filePattern = {folder}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


def java_binary() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on the PATH (Kafka 4 needs Java 17 or newer)."""
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").is_file():
        return str(Path(home, "bin", "java"))
    found = shutil.which("java")
    if found is None:
        raise ConfigError(
            f"java is not installed, so the local Kafka broker cannot start. "
            f"Fix: apt-get install -y openjdk-17-jre-headless, or export {BOOTSTRAP_ENV}=host:port"
        )
    return found


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 without padding (what ``kafka-storage random-uuid``
    prints), never starting with ``-`` (like Kafka's ``Uuid.randomUuid``): ``kafka-storage format -t -x...`` reads
    such an id as an option and refuses it (1 start in 64 failed so)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class KafkaServer:
    """A single-node KRaft Kafka broker, child process of this one, on 127.0.0.1."""

    directory: Path | None = None
    stop_at_exit: bool = True  # False for `loom kafka start`: it outlives the command
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    lock_wait_s: float = LOCK_WAIT_S  # how long to wait for a folder whose broker is still stopping
    extra_jvm_options: tuple[str, ...] = ()
    sasl_users: dict[str, str] | None = None  # SASL/PLAIN on the client listener with these users (tests)
    process: subprocess.Popen | None = None
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_settings(self) -> dict[str, str]:
        """librdkafka settings for this broker (as its first SASL user when it has users)."""
        settings = {"bootstrap.servers": self.bootstrap}
        if self.sasl_users:
            user, password = next(iter(self.sasl_users.items()))
            settings.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": user})
            settings["sasl.password"] = password
        return settings

    def _classpath(self) -> str:
        if not kafka_broker_ready():
            fetch_kafka()
        return f"{kafka_broker_libs()}/*"

    def _write_config(self, folder: Path) -> Path:
        while self.controller_port == self.port:
            self.controller_port = free_port()
        settings = dict(_SETTINGS)
        settings["listeners"] = f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
        settings["advertised.listeners"] = f"PLAINTEXT://127.0.0.1:{self.port}"
        settings["controller.quorum.voters"] = f"1@127.0.0.1:{self.controller_port}"
        settings["log.dirs"] = str(folder / "data")
        if self.sasl_users:
            users = " ".join(f'user_{name}="{password}"' for name, password in self.sasl_users.items())
            broker, secret = next(iter(self.sasl_users.items()))
            settings["listener.security.protocol.map"] = "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
            settings["listeners"] = settings["listeners"].replace("PLAINTEXT://", "SASL_PLAINTEXT://", 1)
            settings["advertised.listeners"] = f"SASL_PLAINTEXT://127.0.0.1:{self.port}"
            settings["inter.broker.listener.name"] = "SASL_PLAINTEXT"
            settings["sasl.enabled.mechanisms"] = "PLAIN"
            settings["sasl.mechanism.inter.broker.protocol"] = "PLAIN"
            settings["listener.name.sasl_plaintext.plain.sasl.jaas.config"] = (
                f'{_LOGIN_MODULES["PLAIN"]} required username="{broker}" password="{secret}" {users};'
            )
        properties = folder / "server.properties"
        properties.touch(mode=0o600)  # it may hold the SASL users' passwords
        properties.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        (folder / "log4j2.properties").write_text(_LOG4J.format(folder=folder))
        return properties

    def _java(self, folder: Path, main: str, *args: str) -> list[str]:
        classpath = self._classpath()
        options = os.environ.get(JVM_OPTIONS_ENV, JVM_OPTIONS).split()
        archive = archive_path()
        if JVM_OPTIONS_ENV not in os.environ and not self.extra_jvm_options and archive.is_file():
            options += [f"-XX:SharedArchiveFile={archive}", *_CDS_QUIET]
        log4j = f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}"
        return [java_binary(), *options, *self.extra_jvm_options, log4j, "-cp", classpath, main, *args]

    def _format(self, folder: Path, properties: Path) -> None:
        """Format the data folder once (a new cluster id); a formatted folder keeps its id and its topics."""
        if (folder / "data" / "meta.properties").is_file():
            return
        command = self._java(folder, "kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(properties))
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise StoreError(
                f"could not format the Kafka folder {folder / 'data'}: {(done.stdout + done.stderr).strip()[-1500:]}"
            )

    def start(self, timeout: float = START_TIMEOUT_S) -> KafkaServer:
        """Start the broker and return once it answers metadata requests."""
        if self.directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="loom-kafka-")
            self.directory = Path(self._tmp.name)
        folder = self.directory.resolve()
        folder.mkdir(parents=True, exist_ok=True)
        lock = lock_folder(folder, self.lock_wait_s, kind="Kafka broker", server="Kafka broker", fix=_LOCK_FIX)
        try:
            properties = self._write_config(folder)
            self._format(folder, properties)
            command = self._java(folder, "kafka.Kafka", str(properties))
            # The broker inherits the lock's descriptor: the folder stays locked as long as it lives.
            self.process = spawn_guarded(
                command, die_with_owner=self.stop_at_exit, pass_fds=(lock,), output=folder / "output.log"
            )
        finally:
            os.close(lock)
        (folder / "owner").write_text(
            f"pid {self.process.pid}, port {self.port}, started by pid {os.getpid()}", encoding="utf-8"
        )
        if self.stop_at_exit:
            atexit.register(self.stop)
        self._wait_ready(folder, timeout)
        return self

    def _wait_ready(self, folder: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not (port_open(self.port) and broker_answers(self.bootstrap, settings=self.client_settings())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tails = []
                for name in ("output.log", "server.log"):
                    log = folder / name
                    if log.is_file():
                        tails.append(f"{name}: {log.read_text(errors='replace')[-800:]}")
                raise StoreError(
                    f"the Kafka broker did not start on 127.0.0.1:{self.port} within {timeout:.0f} s. "
                    f"{' '.join(tails) or 'It wrote no log.'}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the broker (a controlled shutdown; SIGKILL after :data:`STOP_TIMEOUT_S`)."""
        terminate(self.process, STOP_TIMEOUT_S)
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> KafkaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_CDS_QUIET = ("-Xlog:cds=off", "-Xlog:cds+dynamic=off")


def archive_path() -> Path:
    """The broker's class-data-sharing archive for this JVM, these flags and these jars (a new name when any
    changes, so a stale archive is never mapped)."""
    libs = kafka_broker_libs()
    parts = [os.path.realpath(java_binary()), JVM_OPTIONS]
    parts += sorted(f"{p.name}:{p.stat().st_size}" for p in libs.glob("*.jar")) if libs.is_dir() else []
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return kafka_cache().parent / "cds" / f"kafka-{key}.jsa"


def build_archive() -> Path | None:
    """Make the broker's CDS archive (once): run a broker that creates a topic, takes and serves a few
    messages, and dumps the classes it loaded when it stops. Its path, or None when the JVM made none."""
    target = archive_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        with KafkaServer(extra_jvm_options=(f"-XX:ArchiveClassesAtExit={partial}", *_CDS_QUIET)) as server:
            _exercise(server.bootstrap)
        if not partial.is_file():
            return None
        os.replace(partial, target)  # atomic: a broker never maps a half-written archive
    except Exception:  # an optimization: whatever fails, the broker starts without an archive
        return None
    finally:
        partial.unlink(missing_ok=True)
    for old in target.parent.glob("kafka-*.jsa"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


def _exercise(bootstrap: str) -> None:
    """A topic, an idempotent producer and a consumer group: the classes every broker start then needs."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: a dropped client cancels its requests
    admin.create_topics([NewTopic("loom.warm-up", num_partitions=2, replication_factor=1)])["loom.warm-up"].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for number in range(10):
        producer.produce("loom.warm-up", value=b"x", key=str(number).encode())
    producer.flush(30)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "loom-warm-up", "auto.offset.reset": "earliest"})
    consumer.subscribe(["loom.warm-up"])
    consumer.poll(10)
    consumer.close()


# Connection settings of Loom's Kafka clients, from the environment (secrets also from files, never from metadata).
SECURITY_ENV = {
    "LOOM_KAFKA_SECURITY_PROTOCOL": "security.protocol",  # PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL
    "LOOM_KAFKA_SASL_MECHANISM": "sasl.mechanism",  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    "LOOM_KAFKA_SASL_USERNAME": "sasl.username",
    "LOOM_KAFKA_SSL_CA_FILE": "ssl.ca.location",  # PEM file of the CA that signed the brokers' certificates
}
PASSWORD_SECRET = "LOOM_KAFKA_SASL_PASSWORD"  # or LOOM_KAFKA_SASL_PASSWORD_FILE
_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def client_settings(bootstrap: str) -> dict[str, str]:
    """librdkafka settings (confluent-kafka) for ``bootstrap`` with the security settings of the environment."""
    settings = {"bootstrap.servers": bootstrap}
    for variable, key in SECURITY_ENV.items():
        value = os.environ.get(variable, "").strip()
        if value:
            settings[key] = value
    password = read_secret(PASSWORD_SECRET, required=False)
    if password is not None:
        settings["sasl.password"] = password
    if settings.get("security.protocol", "PLAINTEXT").upper().startswith("SASL"):
        missing = [v for v, k in SECURITY_ENV.items() if k in ("sasl.mechanism", "sasl.username") and k not in settings]
        if missing or password is None:
            missing += [] if password is not None else [f"{PASSWORD_SECRET} (or {PASSWORD_SECRET}_FILE)"]
            raise ConfigError(
                f"LOOM_KAFKA_SECURITY_PROTOCOL is {settings['security.protocol']} but {', '.join(missing)} "
                "is not set. Fix: export them (the password from a file: LOOM_KAFKA_SASL_PASSWORD_FILE=/path)"
            )
    return settings


def spark_options(bootstrap: str) -> dict[str, str]:
    """The same settings as options of Spark's Kafka source (``kafka.``-prefixed Java client settings).

    The password goes into ``kafka.sasl.jaas.config``; Spark redacts option values that match its
    ``spark.redaction.regex`` (``password`` does) in its UI and logs."""
    settings = client_settings(bootstrap)
    options = {"kafka.bootstrap.servers": bootstrap}
    if "security.protocol" in settings:
        options["kafka.security.protocol"] = settings["security.protocol"]
    mechanism = settings.get("sasl.mechanism")
    if mechanism:
        module = _LOGIN_MODULES.get(mechanism.upper())
        if module is None:
            raise ConfigError(
                f"LOOM_KAFKA_SASL_MECHANISM {mechanism!r} is not supported. Fix: use one of {sorted(_LOGIN_MODULES)}"
            )
        options["kafka.sasl.mechanism"] = mechanism.upper()
        user, password = (settings["sasl.username"], settings["sasl.password"])
        quoted = [value.replace("\\", "\\\\").replace('"', '\\"') for value in (user, password)]
        options["kafka.sasl.jaas.config"] = f'{module} required username="{quoted[0]}" password="{quoted[1]}";'
    if "ssl.ca.location" in settings:
        options["kafka.ssl.truststore.type"] = "PEM"
        options["kafka.ssl.truststore.location"] = settings["ssl.ca.location"]
    return options


def broker_answers(bootstrap: str, timeout: float = 2.0, settings: dict[str, str] | None = None) -> bool:
    """Whether a Kafka cluster at ``bootstrap`` answers a metadata request with at least one broker
    (``settings``: the client's, default :func:`client_settings`)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    config = settings if settings is not None else client_settings(bootstrap)
    admin = AdminClient({**config, "socket.connection.setup.timeout.ms": 1000})
    try:
        return bool(admin.list_topics(timeout=timeout).brokers)
    except KafkaException:
        return False


def running_local_broker(home: Path) -> str | None:
    """Bootstrap address of the broker started by ``loom kafka start`` under ``home``, if it is alive."""
    address = home / "kafka" / "bootstrap"
    if not address.is_file():
        return None
    bootstrap = address.read_text().strip()
    port = int(bootstrap.rsplit(":", 1)[1])
    return bootstrap if port_open(port) and broker_answers(bootstrap) else None


_EPHEMERAL: KafkaServer | None = None


def kafka_bootstrap(home: Path | None = None) -> str:
    """The bootstrap servers Loom should use, starting a broker of this process if there is none."""
    global _EPHEMERAL
    configured = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if configured:
        return configured
    if home is not None:
        local = running_local_broker(home)
        if local:
            return local
    if _EPHEMERAL is None:
        _EPHEMERAL = KafkaServer(directory=home / "kafka" if home is not None else None).start()
    return _EPHEMERAL.bootstrap


@contextlib.contextmanager
def configured_or_throwaway() -> Iterator[str]:
    """``$LOOM_KAFKA_BOOTSTRAP`` if set, else a throwaway broker stopped when the block ends (tests, benchmarks)."""
    configured = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if configured:
        yield configured
        return
    with KafkaServer() as server:
        yield server.bootstrap


def start_persistent(home: Path) -> str:
    """Start (or find) the long-lived local broker of ``loom kafka start``; returns its bootstrap address."""
    existing = running_local_broker(home)
    if existing:
        return existing
    folder = home / "kafka"
    server = KafkaServer(directory=folder, stop_at_exit=False).start()
    (folder / "bootstrap").write_text(server.bootstrap)
    (folder / "pid").write_text(str(server.process.pid))
    return server.bootstrap


def stop_persistent(home: Path, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the broker of :func:`start_persistent` and wait until it is gone. True if one was running."""
    folder = home / "kafka"
    pid_file = folder / "pid"
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text())
    stopped = _is_broker_of(pid, folder)  # a stale pid file may name a process that is not ours
    if stopped:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while stopped and alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if stopped and alive(pid):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    (folder / "bootstrap").unlink(missing_ok=True)
    return stopped


def _is_broker_of(pid: int, folder: Path) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in command and any(str(folder.resolve()).encode() in part for part in command)
