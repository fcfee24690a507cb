"""A quick start for the JVM of short local jobs: JIT and GC options, and a class-data-sharing archive.

A small `loom ingest`, `backfill`, `train` or `score` spends most of its time starting Spark's JVM and
warming it up, not working. On a small machine two things dominate that fixed cost:

* C2, the optimizing JIT compiler, and G1's concurrent threads compete with the job for the cores
  while the job is too short to profit from them. ``-XX:TieredStopAtLevel=1 -XX:+UseSerialGC``
  (the profile key ``loom.quickJvmOptions``) keeps the quick C1 compiler and a single-threaded
  collector;
* loading and verifying some 15,000 classes. An application class-data-sharing (AppCDS) archive,
  made once by ``python -m common.runtime.spark`` (``make setup``) with the same options, maps them from
  one file instead (``.cache/cds``, next to the jars).

Measured by ``python -m bench --only small_jobs`` (bare Spark start + one action + one Delta write
and read, and each job). Long-running work (``loom stream``, ``loom serve``, ``loom demo``, the
throughput benchmarks) keeps the JVM's defaults: C2 pays off there (the short Spark subprocesses the
tests start opt in: ``tests/conftest.py``). The
options apply to the jobs in :data:`QUICK_JOBS` only, in local mode, when the profile sets no
``spark.driver.extraJavaOptions`` of its own; ``LOOM_QUICK_JVM=0`` turns them off.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

QUICK_KEY = "loom.quickJvmOptions"
QUICK_JOBS = frozenset(
    {
        "audit-pii",
        "backfill",
        "consistency",
        "evaluate",
        "forget",
        "ingest",
        "materialize",
        "privacy-report",
        "retrain",
        "rollback",
        "score",
        "smoke",
        "train",
    }
)
ARCHIVE_APP = "loom-cds-archive"
_QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"  # a stale or missing archive is skipped without a word


def is_quick_job(app_name: str) -> bool:
    """Whether ``app_name`` (``loom-<job>-<usecase>...``, set by the job runner) names a short batch job."""
    return app_name == ARCHIVE_APP or any(
        app_name == f"loom-{job}" or app_name.startswith(f"loom-{job}-") for job in QUICK_JOBS
    )


def archive_path(options: str, jars: list[Path]) -> Path:
    """Where the CDS archive for this JVM, these options and this classpath lives (a new one when any changes)."""
    import pyspark

    from common.settings import jar_cache

    spark_jars = Path(pyspark.__file__).parent / "jars"
    parts = [os.path.realpath(_java()), options, pyspark.__version__]
    parts += sorted(f"{p.name}:{p.stat().st_size}" for p in [*spark_jars.glob("*.jar"), *jars] if p.is_file())
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return jar_cache().parent / "cds" / f"spark-{key}.jsa"


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").is_file():
        return str(Path(home, "bin", "java"))
    from shutil import which

    return which("java") or "java"


def driver_options(conf: dict[str, str], app_name: str, jars: list[Path]) -> str | None:
    """The driver JVM options for a quick start of ``app_name`` under ``conf`` (None: keep the JVM's defaults).

    Pops :data:`QUICK_KEY` from ``conf`` (it is Loom's, not Spark's).
    """
    options = conf.pop(QUICK_KEY, "").strip()
    if not options or os.environ.get("LOOM_QUICK_JVM", "1") == "0" or not is_quick_job(app_name):
        return None
    if "spark.driver.extraJavaOptions" in conf or not conf.get("spark.master", "").startswith("local"):
        return None
    archive = archive_path(options, jars)
    if archive.is_file():
        options += f" -XX:SharedArchiveFile={archive}"
    return f"{options} {_QUIET}"


_ARCHIVE_JOB = """
import sys
from common.runtime.spark import build_session
spark = build_session("local", app_name="{app}", overrides={{"spark.driver.extraJavaOptions": sys.argv[1]}})
from pyspark.sql import functions as F
rows = spark.range(2000).select((F.col("id") % 7).alias("k"), F.col("id").cast("double").alias("v"))
rows.groupBy("k").agg(F.avg("v")).collect()
rows.write.format("delta").mode("overwrite").save(sys.argv[2])
spark.read.format("delta").load(sys.argv[2]).where("k = 1").count()
gateway = spark.sparkContext._gateway
spark.stop()
gateway.shutdown()
gateway.proc.stdin.close()  # the JVM exits when its stdin closes, and writes the archive then
gateway.proc.wait()
"""


def build_archive(options: str, jars: list[Path]) -> Path | None:
    """Make the CDS archive by running a small Spark job (a group-by, a Delta write and read) that dumps
    the classes it loaded at exit. Returns its path, or None when the JVM could not make one."""
    import tempfile

    target = archive_path(options, jars)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    with tempfile.TemporaryDirectory() as folder:
        java_options = f"{options} -XX:ArchiveClassesAtExit={partial} -Xlog:cds=off -Xlog:cds+dynamic=off"
        done = subprocess.run(
            [sys.executable, "-c", _ARCHIVE_JOB.format(app=ARCHIVE_APP), java_options, f"{folder}/t"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        return None
    os.replace(partial, target)  # atomic: a job never maps a half-written archive
    for old in target.parent.glob("spark-*.jsa"):
        if old != target:
            old.unlink(missing_ok=True)  # archives of an older classpath or JVM
    return target
