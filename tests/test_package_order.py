"""The package order (pyproject.toml, ``[tool.importlinter]``): no package imports one above it.

Pure and fast (import-linter reads the sources; nothing is imported, no Spark). The second test
plants an upward import in a copy of the code, so the check is shown to fail when the order breaks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "pyproject.toml"
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess:
    """Run the contracts of pyproject.toml over the packages found first on ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), str(CONFIG), "--no-cache", "--no-logo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_package_imports_a_package_above_it():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_order(tmp_path):
    for package in ("common", "jobs"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    # models is below monitoring: a late import inside a function counts as much as one at the top
    train = tmp_path / "common" / "models" / "train.py"
    train.write_text(train.read_text() + "\n\ndef _upward():\n    from common.monitoring import drift  # noqa: F401\n")

    result = lint(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert "common.models.train -> common.monitoring.drift" in result.stdout
