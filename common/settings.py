"""Where Loom keeps its local state, resolved from the environment.

``LOOM_HOME`` (default ``./.loom``) holds Delta tables, the MLflow sqlite store
and artifacts, landing files and checkpoints. Every path derives from it so a
test can point a whole run at a temporary folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _resource_root() -> Path:
    """Where the files shipped beside the code live (``spark-conf/``, the example use cases in ``metadata/``):
    the checkout itself for a source or editable install, else ``<prefix>/share/loom``, where a
    non-editable ``pip install`` puts them (setup.py ``data_files``)."""
    if (PROJECT_ROOT / "spark-conf").is_dir():
        return PROJECT_ROOT
    import sysconfig

    return Path(sysconfig.get_paths()["data"]) / "share" / "loom"


RESOURCE_ROOT = _resource_root()


@dataclass(frozen=True)
class Paths:
    """The folders of one Loom work area."""

    home: Path

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    @property
    def checkpoints(self) -> Path:
        return self.home / "checkpoints"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    def table(self, usecase: str, layer: str, name: str) -> str:
        """Path of a Delta table: ``lake/<usecase>/<layer>/<name>``."""
        return str(self.lake / usecase / layer / name)

    def checkpoint(self, usecase: str, job: str) -> str:
        return str(self.checkpoints / usecase / job)


def loom_home() -> Path:
    """The work folder: ``$LOOM_HOME`` or ``.loom`` under the current directory."""
    return Path(os.environ.get("LOOM_HOME", ".loom")).resolve()


HOME_MARK = ".loom-home"
"""File in LOOM_HOME holding the absolute path the work area was created at."""


def check_home(home: Path) -> None:
    """Refuse a work area that was moved or copied while it holds streaming checkpoints.

    Spark's streaming checkpoints record absolute paths (the files read, the tables written):
    under a new location every stream fails with a raw Java error (``Wrong basePath``). The
    path the home was first used at is kept in :data:`HOME_MARK`; a home without checkpoints
    may move freely (the mark follows it).
    """
    from common.errors import ConfigError

    mark = home / HOME_MARK
    here = str(home)
    recorded = mark.read_text(errors="replace").strip() if mark.is_file() else None
    if recorded == here:
        return
    checkpoints = home / "checkpoints"
    if recorded is not None and checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise ConfigError(
            f"LOOM_HOME {here} was moved or copied from {recorded}, and its streaming checkpoints hold absolute "
            f"paths under the old location. Fix: move it back to {recorded} (or run from a copy there); "
            "to start over elsewhere, use a fresh LOOM_HOME and ingest the landing files again"
        )
    mark.write_text(here + "\n")


def paths() -> Paths:
    """Paths of the current work area, created on first use (and checked: see :func:`check_home`)."""
    home = loom_home()
    home.mkdir(parents=True, exist_ok=True)
    check_home(home)
    return Paths(home)


def jar_cache() -> Path:
    """Folder for downloaded JVM jars (git-ignored): ``$LOOM_JAR_CACHE``, else ``.cache/jars`` of the checkout,
    else (a pip-installed Loom: never inside site-packages) ``$XDG_CACHE_HOME/loom/jars`` (~/.cache)."""
    if (PROJECT_ROOT / "setup.py").is_file():
        default = PROJECT_ROOT / ".cache" / "jars"
    else:
        default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loom" / "jars"
    return Path(os.environ.get("LOOM_JAR_CACHE", default)).resolve()
