"""The CLI contract: every job runs as `loom <job>`, `python -m jobs.<job>` and
`spark-submit jobs/<job>.py`; user errors print one message, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import JOBS
from tests.conftest import quick_jvm_env

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(args: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)


def test_every_job_module_exists_and_has_the_job_interface():
    import importlib

    for name, module_name in JOBS.items():
        module = importlib.import_module(module_name)
        assert module.DESCRIPTION, name
        assert callable(module.add_arguments) and callable(module.run), name
        assert (REPO / "jobs" / f"{module_name.split('.')[-1]}.py").is_file(), name


def test_console_script_runs_a_job():
    done = run([str(BIN / "loom"), "validate", "--usecase", "churn"])
    assert done.returncode == 0, done.stderr
    assert "use case churn v1: OK" in done.stdout


def test_python_dash_m_runs_a_job():
    done = run([sys.executable, "-m", "jobs.validate", "--usecase", "churn"])
    assert done.returncode == 0, done.stderr
    assert "feature group activity" in done.stdout


@pytest.mark.parametrize("entry", ["loom", "module"])
def test_user_error_is_one_message_without_traceback(entry):
    args = (
        [str(BIN / "loom"), "validate", "--usecase", "no_such_case"]
        if entry == "loom"
        else [sys.executable, "-m", "jobs.validate", "--usecase", "no_such_case"]
    )
    done = run(args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "loom validate: error:" in done.stderr
    assert "no use case named 'no_such_case'" in done.stderr


def test_bad_metadata_error_from_the_cli(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "usecase.yaml").write_text("name: bad\nentities: {customer: {key: id, colour: red}}\nsources: {}\n")
    done = run([str(BIN / "loom"), "validate", "--usecase", str(folder)])
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "entities.customer.colour: unknown key 'colour'" in done.stderr


def test_schema_check_passes():
    done = run([str(BIN / "loom"), "schema", "--check"])
    assert done.returncode == 0, done.stdout


@pytest.mark.spark
@pytest.mark.slow
def test_spark_submit_runs_a_job_with_delta_on_the_classpath(tmp_path, redis_url):
    properties = REPO / ".cache" / "loom-spark.conf"
    if not properties.is_file():
        from common.runtime.spark import write_submit_properties

        write_submit_properties(properties)
    done = run(
        [str(BIN / "spark-submit"), "--properties-file", str(properties), "jobs/smoke.py"],
        env={
            "LOOM_HOME": str(tmp_path),
            "REDIS_URL": redis_url,
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            **quick_jvm_env(),  # spark-submit's driver JVM starts like a short local job's
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "delta:" in done.stdout and "versions" in done.stdout
    assert str(tmp_path) in done.stdout


def test_no_job_module_shadows_a_library():
    """spark-submit puts jobs/ first on sys.path: jobs/redis.py once hid redis-py."""
    import importlib.util

    for path in (REPO / "jobs").glob("*.py"):
        if path.stem == "__init__":
            continue
        spec = importlib.util.find_spec(path.stem)
        assert spec is None, f"jobs/{path.name} would shadow the installed module {path.stem!r}"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--usecase", "churn", "--group", "nope"], "unknown feature group(s) ['nope'] in use case 'churn'"),
        (["--usecase", "no_such_case"], "no use case named 'no_such_case'"),
    ],
)
def test_compact_bad_input_is_one_message_and_exit_2(args, says):
    """`loom compact` refuses an unknown use case or group before Spark starts."""
    done = run([sys.executable, "-m", "jobs.compact", *args], timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "loom compact: error:" in done.stderr and says in done.stderr


def test_the_job_log_follows_stderr_when_a_caller_swaps_and_closes_it(monkeypatch):
    """Jobs run in-process (notebooks, tests capturing output) swap sys.stderr and close the old stream; Loom's
    log handler, made once per process, must write to the current one, never fail on a closed one."""
    import io
    import logging

    from common.runtime.log import setup_logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # this process's handler list, restored after the test
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging("INFO")
    logging.getLogger("loom.test").info("to the first stream")
    monkeypatch.setattr(sys, "stderr", second)
    first.close()
    setup_logging("INFO")  # a second job in the same process: the same handler
    logging.getLogger("loom.test").info("to the second stream")
    assert "to the second stream" in second.getvalue()
    assert "Logging error" not in second.getvalue() and len(root.handlers) == 1
