"""An MLflow tracking server on this machine: ``mlflow server`` on a free port of 127.0.0.1.

Its backend store is a sqlite file and its artifacts live under its folder (``mlflow.db``,
``artifacts/``); the server proxies artifact uploads and downloads (``--artifacts-destination``),
so clients need nothing but ``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT``, as with a hosted MLflow.

The guards are the Redis helper's: the parent-death signal on the ``mlflow server`` process (which
forwards SIGTERM to its uvicorn process) and a ``flock`` on the folder held by the server.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import StoreError
from common.runtime.processes import LOCK_WAIT_S, free_port, lock_folder, spawn_guarded, terminate

START_TIMEOUT_S = 120.0  # the first start creates the store's tables (migrations): 5-20 s on a busy machine
_LOCK_FIX = "wait for that job to end, or use another folder, or set MLFLOW_TRACKING_URI to a running server"


@dataclass
class MlflowServer:
    """``mlflow server`` (one worker) with a sqlite backend and proxied artifacts, a child of this process."""

    directory: Path | None = None
    stop_at_exit: bool = True  # False for `loom cluster up`: it outlives the command
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> MlflowServer:
        """Start the server and return once its ``/health`` answers."""
        if self.directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="loom-mlflow-")
            self.directory = Path(self._tmp.name)
        folder = self.directory.resolve()
        (folder / "artifacts").mkdir(parents=True, exist_ok=True)
        lock = lock_folder(folder, LOCK_WAIT_S, kind="MLflow", server="mlflow server", fix=_LOCK_FIX)
        command = [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
            *("--artifacts-destination", str(folder / "artifacts")),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        # No job runner: it starts huey consumers of its own that outlive the server (Loom uses no server jobs).
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        try:
            self.process = spawn_guarded(
                command, die_with_owner=self.stop_at_exit, pass_fds=(lock,), output=folder / "server.log", env=env
            )
        finally:
            os.close(lock)
        (folder / "owner").write_text(f"pid {self.process.pid}, {self.url}, started by pid {os.getpid()}")
        if self.stop_at_exit:
            atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while not healthy(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = folder / "server.log"
                tail = log.read_text()[-1500:] if log.is_file() else ""
                raise StoreError(f"mlflow server did not start on port {self.port}: {tail}")
            time.sleep(0.25)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        terminate(self.process, timeout)  # `mlflow server` forwards SIGTERM to its uvicorn process
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def healthy(url: str, timeout: float = 1.0) -> bool:
    """Whether the tracking server at ``url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as answer:
            return answer.status == 200
    except OSError:
        return False
