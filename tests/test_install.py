"""A pip-installed Loom (non-editable) works in a user's own project folder (issue 19, acceptance):
`loom validate` and `loom ingest`, run from that folder, find ``./metadata/<use case>`` and write
``./.loom``; nothing is read from the checkout the package was built from.

How the test stays honest and fast:

* the package is built from a copy of this working tree (its setup.py, its ``data_files``) and installed
  with ``pip install --no-deps --no-build-isolation`` into a fresh ``python -m venv --without-pip`` made
  from the base interpreter, so the code that runs is the installed wheel, under ``<venv>/lib/.../
  site-packages``, with the Spark profiles and example use cases under ``<venv>/share/loom``;
* its dependencies (pyspark, delta, pandas, ... about 1 GB) are not installed again: a ``.pth`` file
  in the fresh venv appends the development venv's site-packages to ``sys.path``. A ``.pth`` line only
  appends a folder: the ``.pth`` files inside it (the editable install's finder that maps ``common`` and
  ``jobs`` to the checkout) are not run, so the checkout cannot leak in; the test asserts where
  ``common`` is imported from;
* the Delta jars come from the checkout's jar cache through ``LOOM_JAR_CACHE`` (what a user sets to
  share one cache); the installed Loom would otherwise fetch them into ~/.cache/loom/jars.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"

USECASE = """\
name: telco
description: a new user's own data, one row per customer
entities:
  customer: {key: customer_id}
sources:
  customers:
    kind: table
    format: csv
    path: "{landing}/customers"
    entity: customer
    id: customer_id
    columns:
      customer_id: {type: string, required: true}
      contract: {type: string}
      tenure: {type: double}
feature_groups:
  profile:
    entity: customer
    source: customers
    transforms:
      - {name: contract, fn: one_hot, input: contract, values: [Month-to-month, One year, Two year]}
    features:
      - {name: tenure, expr: tenure}
      - {name: month_to_month, expr: contract_month_to_month}
"""

ROWS = """\
customer_id,contract,tenure
c-1,Month-to-month,1
c-2,One year,34
c-3,Two year,
c-4,Month-to-month,2
"""


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with Loom installed from a copy of this working tree; returns the venv."""
    root = tmp_path_factory.mktemp("install")
    source = root / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".cache", ".loom", "*.egg-info", "build", "dist", "__pycache__", ".*_cache", "results"
        ),
    )
    venv = root / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / "lib" / PY / "site-packages"
    (site / "loom_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet", "--no-deps"]
        + ["--no-build-isolation", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


@pytest.mark.spark  # `loom ingest` in a subprocess
@pytest.mark.slow
def test_validate_and_ingest_in_the_users_project_folder(installed, tmp_path):
    venv = installed
    # nothing of the working tree on the path (a developer's PYTHONPATH would shadow the installed wheel)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOM_", "PYSPARK_", "REDIS_", "PYTHONPATH"))}
    env["LOOM_JAR_CACHE"] = str(REPO / ".cache" / "jars")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    where = _run([str(venv / "bin" / "python"), "-c", "import common, jobs; print(common.__file__)"], tmp_path, env)
    site = venv / "lib" / PY / "site-packages"
    assert where.stdout.strip() == str(site / "common" / "__init__.py"), where
    assert (venv / "share" / "loom" / "spark-conf" / "local.conf").is_file()
    assert (venv / "share" / "loom" / "metadata" / "churn" / "usecase.yaml").is_file(), "the bundled example"

    project = tmp_path / "project"
    (project / "metadata" / "telco").mkdir(parents=True)
    (project / "metadata" / "telco" / "usecase.yaml").write_text(USECASE)
    landing = project / ".loom" / "landing" / "telco" / "customers"
    landing.mkdir(parents=True)
    (landing / "part-0.csv").write_text(ROWS)

    validate = _run(["loom", "validate", "--usecase", "telco"], project, env)
    assert validate.returncode == 0, validate.stderr
    assert "use case telco v1: OK" in validate.stdout
    assert f"metadata: {project / 'metadata' / 'telco'}" in validate.stdout, "found ./metadata of the project"

    ingest = _run(["loom", "ingest", "--usecase", "telco"], project, env)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    [line] = [line for line in ingest.stdout.splitlines() if line.startswith("customers ")]
    assert line.split()[1:4] == ["4", "4", "0"], ingest.stdout  # read, accepted, quarantined
    assert (project / ".loom" / "lake" / "telco" / "bronze" / "customers" / "_delta_log").is_dir()

    unknown = _run(["loom", "validate", "--usecase", "shop"], project, env)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert f"Fix: create {project / 'metadata' / 'shop' / 'usecase.yaml'}" in unknown.stderr
