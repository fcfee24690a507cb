"""The quick JVM of short local jobs (common/runtime/jvm.py): which jobs get it, and what turns it off."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.runtime.jvm import QUICK_KEY, archive_path, driver_options, is_quick_job
from common.runtime.spark import read_profile

OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def _conf(**extra: str) -> dict[str, str]:
    return {"spark.master": "local[2]", QUICK_KEY: OPTIONS, **extra}


def test_the_local_profile_asks_for_it_and_the_submit_properties_leave_it_out(tmp_path):
    from common.runtime.spark import write_submit_properties

    assert read_profile("local")[QUICK_KEY] == OPTIONS
    written = write_submit_properties(tmp_path / "loom-spark.conf").read_text()
    assert "loom." not in written and "spark.jars" in written  # spark-submit would warn about a non-Spark key


@pytest.mark.parametrize(
    ("app", "quick"),
    [
        ("loom-train-telco-telco_churn", True),
        ("loom-ingest-telco", True),
        ("loom-audit-pii-churn", True),
        ("loom-stream-churn", False),
        ("loom-demo", False),
        ("loom-bench-streaming", False),
        ("loom-tests", False),
        ("loom-trainer", False),
    ],
)
def test_only_short_batch_jobs_get_it(app, quick):
    assert is_quick_job(app) is quick
    conf = _conf()
    options = driver_options(conf, app, [])
    assert QUICK_KEY not in conf  # Loom's key never reaches Spark
    assert (options is not None) is quick
    if quick:
        assert options.startswith(OPTIONS) and "-Xlog:cds=off" in options


def test_it_yields_to_the_profile_the_environment_and_other_masters(monkeypatch):
    assert driver_options(_conf(**{"spark.driver.extraJavaOptions": "-Dx=1"}), "loom-score-churn", []) is None
    assert driver_options(_conf(**{"spark.master": "spark://host:7077"}), "loom-score-churn", []) is None
    assert driver_options({"spark.master": "local[2]"}, "loom-score-churn", []) is None
    monkeypatch.setenv("LOOM_QUICK_JVM", "0")
    assert driver_options(_conf(), "loom-score-churn", []) is None


def test_the_archive_is_used_when_it_exists_and_is_named_by_jvm_options_and_classpath(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOM_JAR_CACHE", str(tmp_path / "jars"))
    jar = tmp_path / "extra.jar"
    jar.write_bytes(b"x")
    archive = archive_path(OPTIONS, [jar])
    assert archive.parent == tmp_path / "cds"
    assert archive != archive_path(OPTIONS + " -Xmx1g", [jar])
    assert "SharedArchiveFile" not in driver_options(_conf(), "loom-score-churn", [jar])
    archive.parent.mkdir()
    archive.write_bytes(b"")
    assert f"-XX:SharedArchiveFile={archive}" in driver_options(_conf(), "loom-score-churn", [jar])
    jar.write_bytes(b"xy")  # another classpath: another archive, so a stale one is never mapped
    assert archive_path(OPTIONS, [jar]) != archive
    assert Path(archive).name.startswith("spark-")
