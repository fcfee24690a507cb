"""Delta Lake's JVM jars: fetched once from Maven into a git-ignored cache.

``python -m common.runtime.jars`` (run by ``make``) copies the jars of the pinned Delta
release with ``mvn dependency:copy``. The session factory puts them on the
classpath. On a cluster that already ships Delta (Databricks) nothing is added.
"""

from __future__ import annotations

import shutil
import subprocess
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
