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

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    def table(self, usecase: str, layer: str, name: str) -> str:
        """Path of a Delta table: ``lake/<usecase>/<layer>/<name>``."""
        return str(self.lake / usecase / layer / name)

    def checkpoint(self, usecase: str, job: str) -> str:
        return str(self.checkpoints / usecase / job)


def loom_home() -> Path:
    """The work folder: ``$LOOM_HOME`` or ``.loom`` under the current directory."""
    return Path(os.environ.get("LOOM_HOME", ".loom")).resolve()


def paths() -> Paths:
    """Paths of the current work area, created on first use."""
    home = loom_home()
    home.mkdir(parents=True, exist_ok=True)
    return Paths(home)


def jar_cache() -> Path:
    """Folder for downloaded JVM jars (git-ignored): ``$LOOM_JAR_CACHE`` or ``.cache/jars``."""
    default = PROJECT_ROOT / ".cache" / "jars"
    return Path(os.environ.get("LOOM_JAR_CACHE", default)).resolve()
