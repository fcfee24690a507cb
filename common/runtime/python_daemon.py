"""Spark's Python daemon with the libraries its workers need imported once, before it forks them.

Spark starts one ``pyspark.daemon`` per kind of Python runner and forks a worker from it for each
concurrent task; an idle worker is killed after a minute (a fixed timeout in Spark), so a stream with
pauses between its batches forks new ones. Each fork imported numpy, pandas, pyarrow, redis and, for
scoring, MLflow and the model's code again: at load 8 on 2 cores about 10 s for ``mlflow.pyfunc``
alone, paid by every worker of a process's first scoring batches. Imported here, in the daemon,
they are shared by every fork (copy-on-write) and a new worker starts with them loaded.

``spark.python.daemon.module`` names this module (:func:`common.runtime.spark.build_session`, local
mode). ``LOOM_PYTHON_PRELOAD`` (comma-separated module names) replaces :data:`DEFAULT_PRELOAD`;
``loom stream`` sets it (:func:`set_preload`) to add its workers' own modules, and MLflow, the pyfunc and
scikit-learn when it scores. A module that fails to import is skipped:
the worker imports it itself, as without this module. Only modules that start no Python thread when
imported belong here (the daemon forks; see pyspark.daemon).

Spark puts its own ``pyspark.zip`` and py4j's zip first on the workers' ``PYTHONPATH``. Python cannot cache
byte code for a module imported from a zip: every new daemon, and every fork that imports a module of
PySpark the daemon had not, compiled those modules from source again. Importing the worker's PySpark modules
took 0.72 s from the zips and 0.18 s installed; in a py-spy profile of the feature stream's workers, 3.5% of
the samples compiled modules of the zip. When the installed ``pyspark`` and ``py4j`` are
the very files zipped (a pip install: the same ``version.py``), :func:`prefer_installed` moves the zips to the
end of the path, so that the installed packages and their byte-code cache are imported instead.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import os
import sys
import zipfile

PRELOAD_ENV = "LOOM_PYTHON_PRELOAD"
DEFAULT_PRELOAD = ("numpy", "pandas", "pyarrow", "orjson", "redis")


def preload_modules(environ: dict[str, str] | os._Environ = os.environ) -> list[str]:
    """The modules the daemon imports before forking workers."""
    listed = environ.get(PRELOAD_ENV)
    if listed is None:
        return list(DEFAULT_PRELOAD)
    return [name.strip() for name in listed.split(",") if name.strip()]


def set_preload(modules: list[str], environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Have the daemons of a session started after this call (its JVM inherits the environment) preload
    :data:`DEFAULT_PRELOAD` and ``modules``; an explicit ``LOOM_PYTHON_PRELOAD`` is left as it is."""
    environ.setdefault(PRELOAD_ENV, ",".join(dict.fromkeys((*DEFAULT_PRELOAD, *modules))))


def preload(names: list[str]) -> list[str]:
    """Import ``names``; returns those that imported."""
    loaded = []
    with contextlib.redirect_stdout(sys.stderr):  # the daemon's stdout carries its port to the JVM
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # the worker imports it itself (and reports a real error there)
                continue
            loaded.append(name)
    return loaded


def prefer_installed(path: list[str] = sys.path) -> list[str]:
    """Move each of Spark's zips (``pyspark.zip``, ``py4j-*-src.zip``) whose package is installed at the same
    version to the end of ``path`` (in place); returns the zips moved."""
    installed = [entry for entry in path if not entry.endswith(".zip")]
    moved = []
    for entry in list(path):
        name = os.path.basename(entry)
        package = "pyspark" if name == "pyspark.zip" else "py4j" if name.startswith("py4j-") else None
        if package is None or not name.endswith(".zip"):
            continue
        spec = importlib.machinery.PathFinder.find_spec(package, installed)
        if spec is None or not spec.submodule_search_locations:
            continue
        zipped = _version_file(entry, package)
        if zipped is not None and zipped == _installed_version_file(spec.submodule_search_locations[0]):
            path.remove(entry)
            path.append(entry)
            moved.append(entry)
    return moved


def _version_file(archive: str, package: str) -> bytes | None:
    try:
        with zipfile.ZipFile(archive) as opened:
            return opened.read(f"{package}/version.py")
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def _installed_version_file(folder: str) -> bytes | None:
    try:
        with open(os.path.join(folder, "version.py"), "rb") as version:
            return version.read()
    except OSError:
        return None


if __name__ == "__main__":
    prefer_installed()
    preload(preload_modules())
    from pyspark.daemon import manager

    manager()
