"""Loom's JVM parts: fetched once from Maven Central into a git-ignored cache.

* Delta Lake's jars (``.cache/jars``), copied with ``mvn dependency:copy``. The session factory puts
  them on the classpath. On a cluster that already ships Delta (Databricks) nothing is added.
* Apache Kafka's broker (``.cache/kafka/libs``): ``kafka_2.13`` and everything it needs at run time,
  for the local KRaft broker of :mod:`common.runtime.kafka_server`.
* Spark's Kafka source (``.cache/kafka/connector``): ``spark-sql-kafka-0-10`` of the installed
  PySpark with its run-time dependencies (kafka-clients, commons-pool2, the token provider), and
  ``spark-avro`` (``from_avro``, for Kafka values written in Avro; the Avro library itself ships with
  PySpark), less
  the jars PySpark already ships (Scala, Hadoop's client, lz4, snappy, ...): two versions of one
  library on a classpath is a bug waiting for its day.

The Kafka parts are resolved with ``mvn dependency:copy-dependencies`` on a generated pom, so their
transitive dependencies come too; a folder is complete once its ``.complete`` stamp names the same
coordinates (a half-done copy is never used: it is made beside the folder and renamed into place).
``make setup`` (``make jars``, ``python -m common.runtime.spark``) fetches all of them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from common.errors import ConfigError
from common.settings import jar_cache

# The delta-spark pip package of the same version declares the PySpark range it
# supports; setup.py pins both. delta-spark_2.13 4.4.0 is built on Spark 4.2.0.
DELTA_VERSION = "4.4.0"
SCALA_BINARY = "2.13"
DELTA_ARTIFACTS = (
    f"io.delta:delta-spark_{SCALA_BINARY}:{DELTA_VERSION}",
    f"io.delta:delta-storage:{DELTA_VERSION}",
)


def jar_name(coordinate: str) -> str:
    """File name Maven gives the jar of ``group:artifact:version``."""
    _, artifact, version = coordinate.split(":")
    return f"{artifact}-{version}.jar"


def delta_jars(cache: Path | None = None) -> list[Path]:
    """Paths of the Delta jars in the cache, in classpath order."""
    folder = cache or jar_cache()
    return [folder / jar_name(c) for c in DELTA_ARTIFACTS]


def missing_jars(cache: Path | None = None) -> list[Path]:
    return [p for p in delta_jars(cache) if not p.is_file()]


def fetch(cache: Path | None = None) -> list[Path]:
    """Copy the Delta jars into the cache unless they are already there."""
    folder = cache or jar_cache()
    folder.mkdir(parents=True, exist_ok=True)
    todo = [c for c in DELTA_ARTIFACTS if not (folder / jar_name(c)).is_file()]
    if not todo:
        return delta_jars(folder)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigError(
            "Maven (mvn) is not installed, so the Delta jars cannot be fetched. "
            "Fix: install it (apt-get install -y maven) and run `make jars` again"
        )
    for coordinate in todo:
        cmd = [
            mvn,
            "-q",
            "-B",
            "dependency:copy",
            f"-Dartifact={coordinate}",
            f"-DoutputDirectory={folder}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(
                f"could not fetch {coordinate} from Maven Central: {(done.stdout + done.stderr).strip()[-2000:]}"
            )
    return delta_jars(folder)


# Kafka's broker. 4.x runs KRaft only (no ZooKeeper) and needs Java 17. Its clients talk to brokers back
# to 2.1, so Spark 4.2's kafka-clients 3.9.2 (the connector's) works with it (tests/test_kafka.py reads back
# through the connector). log4j-slf4j-impl routes the broker's slf4j logging to log4j2, into server.log.
KAFKA_VERSION = "4.4.0"
KAFKA_BROKER_ARTIFACTS = (
    f"org.apache.kafka:kafka_{SCALA_BINARY}:{KAFKA_VERSION}",
    "org.apache.logging.log4j:log4j-slf4j-impl:2.25.5",
)
STAMP = ".complete"


def kafka_connector_artifacts() -> tuple[str, ...]:
    """Spark's Kafka source and its Avro functions for the installed PySpark (both must match Spark exactly)."""
    import pyspark

    return (
        f"org.apache.spark:spark-sql-kafka-0-10_{SCALA_BINARY}:{pyspark.__version__}",
        f"org.apache.spark:spark-avro_{SCALA_BINARY}:{pyspark.__version__}",
    )


def kafka_cache(cache: Path | None = None) -> Path:
    """``.cache/kafka``: beside the Delta jars' folder."""
    return (cache or jar_cache()).parent / "kafka"


def kafka_broker_libs(cache: Path | None = None) -> Path:
    """Folder of the broker's jars (its classpath is ``<folder>/*``)."""
    return kafka_cache(cache) / "libs"


def kafka_connector_folder(cache: Path | None = None) -> Path:
    return kafka_cache(cache) / "connector"


def _complete(folder: Path, coordinates: tuple[str, ...]) -> bool:
    stamp = folder / STAMP
    return stamp.is_file() and stamp.read_text().split() == list(coordinates)


def kafka_connector_jars(cache: Path | None = None) -> list[Path]:
    """The connector's jars when they have been fetched (else none: Spark then starts without them)."""
    folder = kafka_connector_folder(cache)
    if not _complete(folder, kafka_connector_artifacts()):
        return []
    return sorted(folder.glob("*.jar"))


def kafka_broker_ready(cache: Path | None = None) -> bool:
    return _complete(kafka_broker_libs(cache), KAFKA_BROKER_ARTIFACTS)


def artifact_of(jar: str) -> str:
    """``kafka-clients-3.9.2.jar`` -> ``kafka-clients`` (the name without its version)."""
    # the version starts at the first "-<digits>." (not "-0-10_2.13" inside spark-sql-kafka-0-10_2.13)
    match = re.match(r"(.+?)-\d+\.[^-]*(?:-.*)?\.jar$", jar)
    return match.group(1) if match else jar.removesuffix(".jar")


def _pyspark_artifacts() -> set[str]:
    import pyspark

    return {artifact_of(p.name) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}


def _copy_dependencies(coordinates: tuple[str, ...], target: Path, skip: set[str]) -> None:
    """Resolve ``coordinates`` with their run-time dependencies into ``target`` (atomically), less ``skip``."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigError(
            "Maven (mvn) is not installed, so Kafka's jars cannot be fetched. "
            "Fix: install it (apt-get install -y maven) and run `make jars` again"
        )
    dependencies = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in (c.split(":") for c in coordinates)
    )
    pom = (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>loom</groupId><artifactId>loom-kafka-jars</artifactId><version>1</version>"
        f"<packaging>pom</packaging><dependencies>{dependencies}</dependencies></project>"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        (staging / "pom.xml").write_text(pom)
        jars = staging / "jars"
        cmd = [mvn, "-q", "-B", "-f", str(staging / "pom.xml"), "dependency:copy-dependencies"]
        cmd += [f"-DoutputDirectory={jars}", "-DincludeScope=runtime"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(
                f"could not fetch {', '.join(coordinates)} from Maven Central: "
                f"{(done.stdout + done.stderr).strip()[-2000:]}"
            )
        for jar in jars.glob("*.jar"):
            if artifact_of(jar.name) in skip:
                jar.unlink()
        (jars / STAMP).write_text("\n".join(coordinates) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(jars, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_kafka(cache: Path | None = None) -> tuple[Path, list[Path]]:
    """Fetch the broker's jars and Spark's Kafka connector unless they are there; (broker folder, connector jars)."""
    broker = kafka_broker_libs(cache)
    if not _complete(broker, KAFKA_BROKER_ARTIFACTS):
        _copy_dependencies(KAFKA_BROKER_ARTIFACTS, broker, skip=set())
    connector = kafka_connector_folder(cache)
    if not _complete(connector, kafka_connector_artifacts()):
        _copy_dependencies(kafka_connector_artifacts(), connector, skip=_pyspark_artifacts())
    return broker, kafka_connector_jars(cache)
