"""Spark's Python daemon with preloaded modules (common.runtime.python_daemon)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from common.runtime.python_daemon import (
    DEFAULT_PRELOAD,
    PRELOAD_ENV,
    prefer_installed,
    preload,
    preload_modules,
    set_preload,
)
from common.runtime.spark import PYTHON_DAEMON


def test_preload_list_defaults_and_env():
    assert preload_modules({}) == list(DEFAULT_PRELOAD)
    assert preload_modules({PRELOAD_ENV: " numpy, ,json "}) == ["numpy", "json"]
    assert preload_modules({PRELOAD_ENV: ""}) == []


def test_set_preload_adds_to_the_defaults_once_and_keeps_an_explicit_list():
    environ: dict[str, str] = {}
    set_preload(["numpy", "mlflow.pyfunc"], environ)
    assert environ[PRELOAD_ENV].split(",") == [*DEFAULT_PRELOAD, "mlflow.pyfunc"]
    environ = {PRELOAD_ENV: "json"}
    set_preload(["mlflow.pyfunc"], environ)
    assert environ[PRELOAD_ENV] == "json"


def test_a_module_that_fails_to_import_is_skipped():
    sys.modules.pop("colorsys", None)
    assert preload(["no_such_module_loom", "colorsys"]) == ["colorsys"]
    assert "colorsys" in sys.modules


def test_spark_zips_go_behind_the_installed_packages_of_the_same_version(tmp_path):
    import pyspark

    same = tmp_path / "pyspark.zip"
    with zipfile.ZipFile(same, "w") as archive:
        archive.writestr("pyspark/version.py", Path(pyspark.__file__).with_name("version.py").read_bytes())
    other = tmp_path / "py4j-0.0.1-src.zip"  # another version than the installed py4j: stays first
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("py4j/version.py", b"__version__ = '0.0.1'\n")
    installed = str(Path(pyspark.__file__).parents[1])
    path = [str(same), str(other), installed]
    assert prefer_installed(path) == [str(same)]
    assert path == [str(other), installed, str(same)]
    assert prefer_installed([str(same)]) == []  # nothing installed on that path: the zip is all there is
    # neither side has a version.py: not known to be the same files, so the zip stays first
    bare = tmp_path / "bare"
    (bare / "pyspark").mkdir(parents=True)
    (bare / "pyspark" / "__init__.py").write_text("")
    unknown = tmp_path / "unknown" / "pyspark.zip"
    unknown.parent.mkdir()
    with zipfile.ZipFile(unknown, "w") as archive:
        archive.writestr("pyspark/__init__.py", b"")
    assert prefer_installed([str(unknown), str(bare)]) == []


def test_local_workers_are_forked_by_the_preloading_daemon(spark):
    assert spark.conf.get("spark.python.daemon.module") == PYTHON_DAEMON

    def worker(_):
        import sys

        with open("/proc/self/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
        import pyspark

        return argv, sorted(m for m in ("numpy", "pyarrow") if m in sys.modules), pyspark.__file__

    argv, modules, pyspark_file = spark.sparkContext.parallelize([0], 1).map(worker).collect()[0]
    assert PYTHON_DAEMON.encode() in argv  # forked by our daemon, not pyspark.daemon
    assert modules == ["numpy", "pyarrow"]  # a plain RDD worker imports neither itself
    assert ".zip" not in pyspark_file  # the installed package (byte code cached), not Spark's pyspark.zip
