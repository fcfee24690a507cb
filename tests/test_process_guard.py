"""Servers Loom starts die with their owner; two servers never share a folder; a moved home is refused (issue 20).

Real processes: `loom serve` in a subprocess starts its own redis-server under ``$LOOM_HOME/redis``
(no REDIS_URL). Killed with SIGKILL, or stopped with SIGTERM (uvicorn then re-raises the signal,
so exit handlers do not run), its redis-server must be gone within 5 s. While one holds the
folder, a second server on it is refused with a clear message (documented in docs/operations.md: use
`loom redis start` to share one server, or REDIS_URL).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.errors import StoreError
from common.runtime.processes import alive, free_port
from common.runtime.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
# Test key, not a secret: generated for this test only.
API_KEYS = "guard:guard-test-key-5e1a7c3b9d2f4a6c"


def _redis_pid(home: Path, owner: int, timeout: float = 120) -> int:
    """The pid of the redis-server that process ``owner`` started under ``home/redis``."""
    deadline = time.monotonic() + timeout
    owner_file = home / "redis" / "owner"
    while time.monotonic() < deadline:
        if owner_file.is_file():
            match = re.match(r"pid (\d+), port \d+, started by pid (\d+)", owner_file.read_text())
            if match and int(match.group(2)) == owner:
                return int(match.group(1))
        time.sleep(0.2)
    raise AssertionError(f"no redis-server of pid {owner} under {home}")


def _serve(home: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LOOM_"))}
    env.update(LOOM_HOME=str(home), LOOM_API_KEYS=API_KEYS)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "serve",
            "--usecase",
            "churn",
            "--port",
            str(free_port()),
            "--no-log-predictions",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


# slow: a server end to end (`loom serve` and its redis-server in a subprocess, then the signal); 8-9 s each
@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_redis_server_of_loom_serve_dies_with_it(tmp_path, how):
    job = _serve(tmp_path)
    try:
        redis_pid = _redis_pid(tmp_path, job.pid)
        assert alive(redis_pid)
        # while it runs, a second server on the same folder is refused, with the fix
        with pytest.raises(StoreError, match=r"in use by another redis-server .*loom redis start"):
            RedisServer(directory=tmp_path / "redis", persistent=True, stop_at_exit=True).start()
        job.send_signal(how)
        job.wait(timeout=60)
        assert _gone_within(redis_pid, 5), f"redis-server {redis_pid} outlived loom serve ({how.name})"
        assert "Traceback" not in job.stderr.read()
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    # the folder is free again: the next job's server starts on it and finds the data
    server = RedisServer(directory=tmp_path / "redis", persistent=True, stop_at_exit=True).start()
    server.stop()


def test_a_process_killed_while_holding_a_server_leaves_no_orphan(tmp_path):
    """The library path every job uses (redis_url with a home), in a process killed with SIGKILL."""
    code = (
        "import sys, time; from pathlib import Path; from common.runtime.redis_server import redis_url; "
        "redis_url(Path(sys.argv[1])); print('up', flush=True); time.sleep(600)"
    )
    job = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "up"
        redis_pid = _redis_pid(tmp_path, job.pid, timeout=10)
        os.kill(job.pid, signal.SIGKILL)
        job.wait(timeout=10)
        assert _gone_within(redis_pid, 5)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


def test_a_moved_home_with_checkpoints_is_refused_in_one_line(tmp_path):
    from common.settings import HOME_MARK, check_home

    first = tmp_path / "first"
    (first / "checkpoints" / "churn" / "ingest_events" / "offsets").mkdir(parents=True)
    (first / "checkpoints" / "churn" / "ingest_events" / "offsets" / "0").write_text("v1\n")
    check_home(first.resolve())
    assert (first / HOME_MARK).read_text().strip() == str(first.resolve())
    moved = tmp_path / "moved"
    first.rename(moved)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LOOM_"))}
    env["LOOM_HOME"] = str(moved)
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "ingest", "--usecase", "churn", "--source", "events"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-2000:]
    assert f"was moved or copied from {first.resolve()}" in lines[0] and "Fix: move it back" in lines[0]
    # a home without checkpoints may move: the mark follows it
    empty = tmp_path / "empty"
    empty.mkdir()
    check_home(empty)
    empty.rename(tmp_path / "empty2")
    check_home(tmp_path / "empty2")
    assert (tmp_path / "empty2" / HOME_MARK).read_text().strip() == str(tmp_path / "empty2")
