"""A Spark standalone cluster on this machine: one master and N workers, from the pyspark distribution.

The same processes a Spark cluster runs (``bin/spark-class org.apache.spark.deploy.master.Master`` and
``...deploy.worker.Worker``), each a JVM on 127.0.0.1 with its web UI on a free port. The jobs reach it
through the ``standalone`` Spark profile with ``SPARK_MASTER_URL`` (``spark://127.0.0.1:PORT``); Delta's
jars travel with ``spark.jars`` and Loom's code with the installed package (see the README, "Running on a
cluster").

The guards are the Redis helper's (:mod:`common.runtime.redis_server`): each JVM of a cluster started by a
process gets the parent-death signal, so the cluster dies with its owner even under SIGKILL, and the
cluster's folder is locked by ``flock`` (held by the master itself), so two clusters never share one.
``spark-class`` ends in ``exec java``, so the signal and the lock's descriptor reach the JVM itself.
The folder holds each daemon's output (``master.log``, ``worker-<i>.log``) and the workers' scratch
folders (``work/``: executors' files, removed with the cluster).
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError, StoreError
from common.runtime.processes import LOCK_WAIT_S, free_port, lock_folder, spawn_guarded, terminate_all

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
START_TIMEOUT_S = 120.0  # three cold JVMs on a loaded 2-core machine
DAEMON_MEMORY = "256m"  # the master's and workers' own heaps (not the executors')
_LOCK_FIX = "wait for that job to end, or use another folder, or point SPARK_MASTER_URL at a running cluster"


def spark_home() -> Path:
    """The pyspark distribution's folder (it has ``bin/spark-class`` and the jars)."""
    import pyspark

    home = Path(pyspark.__file__).parent
    if not (home / "bin" / "spark-class").is_file():
        raise ConfigError(
            f"{home} has no bin/spark-class, so a local standalone cluster cannot start. "
            "Fix: pip install pyspark (the PyPI package ships it), or set SPARK_MASTER_URL to a running cluster"
        )
    return home


@dataclass
class SparkStandalone:
    """One master and ``workers`` workers of ``cores`` cores and ``memory`` each, children of this process."""

    directory: Path | None = None
    workers: int = 2
    cores: int = 1
    memory: str = "1g"
    stop_at_exit: bool = True  # False for `loom cluster up`: it outlives the command
    port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def _environment(self, folder: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SPARK_HOME": str(spark_home()),
                "SPARK_LOCAL_IP": "127.0.0.1",  # bind every daemon and executor to the loopback only
                "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
                "SPARK_LOG_DIR": str(folder),
                "SPARK_WORKER_DIR": str(folder / "work"),
                "SPARK_NO_DAEMONIZE": "1",
            }
        )
        return env

    def _daemon(self, folder: Path, name: str, main: str, *args: str, pass_fds: tuple[int, ...] = ()) -> None:
        command = [str(spark_home() / "bin" / "spark-class"), main, *args]
        process = spawn_guarded(
            command,
            die_with_owner=self.stop_at_exit,
            pass_fds=pass_fds,
            output=folder / f"{name}.log",
            env=self._environment(folder),
            cwd=folder,  # `loom cluster down` recognises its daemons by their working folder
        )
        self.processes.append(process)

    def start(self, timeout: float = START_TIMEOUT_S) -> SparkStandalone:
        """Start the master, then the workers; return when all workers are registered and alive."""
        if self.directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="loom-spark-cluster-")
            self.directory = Path(self._tmp.name)
        folder = self.directory.resolve()
        (folder / "work").mkdir(parents=True, exist_ok=True)
        lock = lock_folder(folder, LOCK_WAIT_S, kind="Spark cluster", server="Spark master", fix=_LOCK_FIX)
        try:
            # the master holds the lock's descriptor: the folder stays locked as long as the master lives
            self._daemon(
                folder,
                "master",
                MASTER_CLASS,
                *("--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.ui_port)),
                pass_fds=(lock,),
            )
        finally:
            os.close(lock)
        for index in range(self.workers):
            self._daemon(
                folder,
                f"worker-{index}",
                WORKER_CLASS,
                *("--host", "127.0.0.1", "--webui-port", str(free_port())),
                *("--cores", str(self.cores), "--memory", self.memory, "--work-dir", str(folder / "work")),
                self.master_url,
            )
        (folder / "owner").write_text(f"master {self.master_url}, started by pid {os.getpid()}")
        if self.stop_at_exit:
            atexit.register(self.stop)
        self._wait_for_workers(folder, timeout)
        return self

    def _wait_for_workers(self, folder: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            alive = alive_workers(self.ui_url)
            if alive >= self.workers:
                return
            dead = [p for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                tail = (folder / "master.log").read_text()[-1500:] if (folder / "master.log").is_file() else ""
                why = "a daemon exited" if dead else f"{alive} of {self.workers} workers after {timeout:.0f} s"
                raise StoreError(f"the local Spark cluster did not start ({why}); master.log ends: {tail}")
            time.sleep(0.5)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers, then the master (SIGTERM, then SIGKILL after ``timeout``)."""
        terminate_all(list(reversed(self.processes)), timeout)
        self.processes = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SparkStandalone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def master_state(ui_url: str, timeout: float = 2.0) -> dict | None:
    """The master's own view (its web UI's ``/json``: workers, cores, applications), None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{ui_url}/json", timeout=timeout) as answer:
            return json.load(answer)
    except (OSError, ValueError):
        return None


def alive_workers(ui_url: str) -> int:
    """How many workers the master at ``ui_url`` counts as ALIVE (0 if it does not answer)."""
    state = master_state(ui_url)
    return sum(1 for worker in (state or {}).get("workers", []) if worker.get("state") == "ALIVE")
