"""What a training run records about where it came from: code version and package versions."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]

# What the logged pyfunc needs at load time, pinned to the versions that trained it.
RUNTIME_PACKAGES = ("mlflow", "scikit-learn", "pandas", "numpy", "pyarrow", "joblib", "redis", "hiredis")


def code_version() -> str:
    """The git commit of the Loom checkout (``+dirty`` with uncommitted changes), else the package version."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"loom-{_version('loom') or 'unknown'}"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def pip_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """Pinned requirements of the model's runtime (plus ``extra`` packages, e.g. xgboost)."""
    pins = []
    for package in RUNTIME_PACKAGES + extra:
        version = _version(package)
        pins.append(f"{package}=={version}" if version else package)
    return pins
