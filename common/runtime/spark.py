"""SparkSession factory driven by the profiles in ``spark-conf/``.

Profiles:
  * ``local``: ``local[N]`` with Delta's extension and catalog, jars from the cache.
  * ``standalone``: ``$SPARK_MASTER_URL`` (spark://...), same Delta set-up.
  * ``databricks``: the cluster's active session; Delta is already there.

A profile is a spark-defaults style file: ``key  value`` per line.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.runtime.jars import delta_jars, fetch, fetch_kafka, kafka_broker_libs, kafka_connector_jars, missing_jars
from common.runtime.jvm import QUICK_KEY, build_archive, driver_options
from common.settings import PROJECT_ROOT, RESOURCE_ROOT

PROFILE_DIR = RESOURCE_ROOT / "spark-conf"
PYTHON_DAEMON = "common.runtime.python_daemon"


def read_profile(name: str, folder: Path = PROFILE_DIR) -> dict[str, str]:
    """Parse ``spark-conf/<name>.conf`` into a dict of Spark settings."""
    path = folder / f"{name}.conf"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.conf"))
        raise ConfigError(
            f"unknown Spark profile {name!r}: {path} does not exist. "
            f"Fix: use one of {known} or add {path.name} to {folder}"
        )
    conf: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ConfigError(f"{path}:{number}: expected 'key value', got {raw!r}")
        conf[parts[0]] = parts[1].strip()
    return conf


@contextlib.contextmanager
def session_conf(spark: Any, conf: Mapping[str, str]) -> Iterator[None]:
    """While the block runs, the session has the settings ``conf``; after it, each key gets its previous value
    back (or is unset again). For settings a query takes when it starts, such as its state store."""
    previous = {key: spark.conf.get(key, None) for key in conf}
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def _delta_on_classpath(spark) -> bool:
    # Spark's own class loader: it sees jars added with spark.jars, Class.forName does not.
    try:
        spark._jvm.org.apache.spark.util.Utils.classForName("io.delta.tables.DeltaTable", True, False)
        return True
    except Exception:  # py4j raises its own error type for a missing class
        return False


def build_session(
    profile: str = "local",
    app_name: str = "loom",
    overrides: dict[str, str] | None = None,
):
    """Return a SparkSession configured by ``profile``.

    ``overrides`` win over the profile (tests use them for master and
    parallelism). In local mode PYSPARK_PYTHON is set to this interpreter:
    without it pandas UDFs fail in the workers with ModuleNotFoundError.
    """
    from pyspark.sql import SparkSession

    conf = read_profile(profile)
    conf.update(overrides or {})
    quick = driver_options(conf, app_name, delta_jars())  # short local jobs: common.runtime.jvm
    if quick:
        conf["spark.driver.extraJavaOptions"] = quick

    if profile == "databricks":
        spark = SparkSession.getActiveSession()
        if spark is None:
            raise ConfigError(
                "profile 'databricks' needs an active Spark session. "
                "Fix: run inside a Databricks notebook or job, or use --profile local"
            )
        for key, value in conf.items():
            spark.conf.set(key, value)
        return spark

    active = SparkSession.getActiveSession()
    if active is not None:
        # spark-submit created the JVM already: only runtime settings apply.
        if not _delta_on_classpath(active):
            raise ConfigError(
                "Delta Lake is not on the classpath of this Spark session. "
                "Fix: pass the jars, e.g. spark-submit --properties-file "
                ".cache/loom-spark.conf ... (written by `make jars`)"
            )
        return active

    if profile == "standalone":
        master = os.environ.get("SPARK_MASTER_URL")
        if not master:
            raise ConfigError(
                "profile 'standalone' needs SPARK_MASTER_URL (spark://host:7077). "
                "Fix: export SPARK_MASTER_URL or use --profile local"
            )
        conf["spark.master"] = master
    if conf.get("spark.master", "").startswith("local"):
        os.environ["PYSPARK_PYTHON"] = sys.executable
        os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
        # workers forked with numpy, pandas, pyarrow... already imported: common.runtime.python_daemon
        conf.setdefault("spark.python.daemon.module", PYTHON_DAEMON)

    if missing_jars():
        fetch()
    jars = ",".join(str(p) for p in session_jars())
    existing = conf.get("spark.jars")
    conf["spark.jars"] = f"{existing},{jars}" if existing else jars

    builder = SparkSession.builder.appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("LOOM_SPARK_LOG_LEVEL", "ERROR"))
    return spark


def session_jars() -> list[Path]:
    """The jars a local session adds: Delta's, then Spark's Kafka source when it was fetched (``make setup``)
    and ``LOOM_SPARK_KAFKA`` is not ``0``. The connector's classes load only when a query reads Kafka."""
    jars = delta_jars()
    if os.environ.get("LOOM_SPARK_KAFKA", "1") != "0":
        jars += kafka_connector_jars()
    return jars


def write_submit_properties(target: Path, profile: str = "local") -> Path:
    """Write a ``--properties-file`` for spark-submit: the profile plus the jars."""
    conf = {k: v for k, v in read_profile(profile).items() if not k.startswith("loom.")}  # Loom's keys, not Spark's
    conf["spark.jars"] = ",".join(str(p) for p in session_jars())
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
    return target


def main() -> int:
    """``python -m common.runtime.spark``: fetch the jars and write the spark-submit properties."""
    try:
        fetch()
        fetch_kafka()
        target = write_submit_properties(PROJECT_ROOT / ".cache" / "loom-spark.conf")
    except ConfigError as err:
        print(f"loom: {err}", file=sys.stderr)
        return 2
    for jar in session_jars():
        print(f"jar: {jar}")
    print(f"kafka broker: {kafka_broker_libs()}")
    print(f"spark-submit properties: {target}")
    if os.environ.get("LOOM_QUICK_JVM", "1") != "0":
        from common.runtime.kafka_server import build_archive as build_kafka_archive

        kafka_archive = build_kafka_archive()
        print(f"class-data-sharing archive for the Kafka broker: {kafka_archive or 'not made (it starts without one)'}")
    options = read_profile("local").get(QUICK_KEY)
    if options and os.environ.get("LOOM_QUICK_JVM", "1") != "0":
        archive = build_archive(options, delta_jars())
        print(
            f"class-data-sharing archive for short jobs: {archive or 'not made (the JVM refused; jobs start without it)'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
