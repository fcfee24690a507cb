"""Redis for Loom: the server named by ``REDIS_URL``, or one we start ourselves.

* ``REDIS_URL`` set: connect to it (password, ACL user and TLS via the URL:
  ``rediss://user:pass@host:port/0``; a password may also come from
  ``REDIS_PASSWORD`` or ``REDIS_PASSWORD_FILE``). With ``LOOM_REDIS_CLUSTER=1`` it names any
  node of a Redis Cluster (redis-py's ``RedisCluster`` finds the others): every job opens
  its client through :func:`connect`, which reads that switch;
* otherwise, a persistent local server started by ``loom redis start`` under
  ``$LOOM_HOME/redis`` is used if it is running;
* otherwise a ``redis-server`` of this process on a free port, stopped when the
  process exits. With a work folder its data lives in ``$LOOM_HOME/redis``
  (append-only file), so the next job finds the online store as the last one
  left it, like the Delta tables beside it; without one, in a temporary folder.

Guards (a server Loom starts dies with its owner; two servers never share a folder):

* a server of a process (not ``loom redis start``'s) gets a parent-death signal
  (``PR_SET_PDEATHSIG``, through ``setpriv --pdeathsig`` or ``prctl`` in the child): when its
  owner dies, even by SIGKILL, or is stopped by SIGTERM without running its exit handlers (as
  uvicorn does), the kernel sends SIGTERM to the redis-server, which writes its AOF and exits.
  The start happens on one long-lived thread of the process, because the kernel sends the
  signal when the *thread* that started the child ends;
* the data folder is locked (``flock`` on ``<folder>/.lock``, held by the redis-server itself
  through an inherited descriptor, so the lock lives exactly as long as the server). A second
  server on a folder a live server holds is refused with a :class:`StoreError` that says what
  to do; :func:`redis_url` first reuses the shared server of ``loom redis start`` when there is one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError, StoreError
from common.runtime.processes import free_port, lock_folder, spawn_guarded, terminate
from common.runtime.secrets import read_secret

CLUSTER_ENV = "LOOM_REDIS_CLUSTER"  # 1: REDIS_URL names a node of a Redis Cluster
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")

_LOCK_FIX = (
    "wait for that job to end, or run `loom redis start` once so that every job shares one server, or set REDIS_URL"
)


@dataclass
class RedisServer:
    """A redis-server child process on 127.0.0.1 (no persistence by default)."""

    port: int = field(default_factory=free_port)
    directory: Path | None = None
    persistent: bool = False
    stop_at_exit: bool | None = None  # default: stop ephemeral servers, keep persistent ones
    extra_args: tuple[str, ...] = ()  # more redis-server options (a cluster node's)
    process: subprocess.Popen | None = None
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError(
                "redis-server is not installed and REDIS_URL is not set. "
                "Fix: apt-get install -y redis-server, or export REDIS_URL=redis://host:port/0"
            )
        if self.directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="loom-redis-")
            self.directory = Path(self._tmp.name)
        self.directory.mkdir(parents=True, exist_ok=True)
        stop_at_exit = self.stop_at_exit if self.stop_at_exit is not None else not self.persistent
        lock = lock_folder(self.directory, kind="Redis", server="redis-server", fix=_LOCK_FIX)
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.persistent:
            args += ["--appendonly", "yes", "--save", "60 1"]
        else:
            args += ["--appendonly", "no", "--save", ""]
        args += list(self.extra_args)
        try:
            # The server inherits the lock's descriptor: the folder stays locked as long as it lives.
            self.process = spawn_guarded(args, die_with_owner=stop_at_exit, pass_fds=(lock,))
        finally:
            os.close(lock)
        (self.directory / "owner").write_text(f"pid {self.process.pid}, port {self.port}, started by pid {os.getpid()}")
        deadline = time.monotonic() + timeout
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError as err:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.directory / "redis.log"
                    tail = log.read_text()[-1000:] if log.exists() else ""
                    raise StoreError(f"redis-server did not start on port {self.port}: {tail}") from err
                time.sleep(0.05)
            finally:
                client.close()
        if stop_at_exit:
            atexit.register(self.stop)
        return self

    def stop(self) -> None:
        terminate(self.process, 10)
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_EPHEMERAL: RedisServer | None = None


def running_local_server(home: Path) -> str | None:
    """URL of the persistent server started by ``loom redis start``, if alive."""
    url_file = home / "redis" / "url"
    if not url_file.is_file():
        return None
    url = url_file.read_text().strip()
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return None
    return url


def redis_url(home: Path | None = None) -> str:
    """The URL Loom should use, starting a server of this process if there is none."""
    global _EPHEMERAL
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    if cluster_mode():
        raise ConfigError(
            f"{CLUSTER_ENV}=1 but REDIS_URL is not set: Loom starts single servers only. Fix: export "
            f"REDIS_URL=redis://host:port/0 naming a node of the cluster (`loom cluster up` prints it), or unset {CLUSTER_ENV}"
        )
    if home is not None:
        local = running_local_server(home)
        if local:
            return local
    if _EPHEMERAL is None:
        if home is not None:
            _EPHEMERAL = RedisServer(directory=home / "redis", persistent=True, stop_at_exit=True).start()
        else:
            _EPHEMERAL = RedisServer().start()
    return _EPHEMERAL.url


@contextlib.contextmanager
def configured_or_throwaway() -> Iterator[str]:
    """``$REDIS_URL`` if set, else a throwaway server stopped when the block ends (tests, benchmarks)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


def cluster_mode() -> bool:
    """Whether ``REDIS_URL`` names a Redis Cluster (``LOOM_REDIS_CLUSTER=1``; unset or 0: one server)."""
    text = os.environ.get(CLUSTER_ENV, "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(
        f"{CLUSTER_ENV}={text[:20]!r} is not a yes/no value. Fix: set it to 1 (Redis Cluster) or 0 (one server)"
    )


def connect(url: str | None = None, *, cluster: bool | None = None, **kwargs):
    """A redis-py client for ``url`` (default: :func:`redis_url`): the one place Loom opens Redis.

    ``cluster`` (default :func:`cluster_mode`, i.e. ``LOOM_REDIS_CLUSTER``) gives a
    ``redis.RedisCluster`` that starts from the node of ``url`` and routes each key to its
    slot's master; otherwise a ``redis.Redis``. The password comes from the URL,
    ``REDIS_PASSWORD`` or ``REDIS_PASSWORD_FILE``; it is never logged (redis-py's repr hides it).
    """
    import redis

    target = url or redis_url()
    password = read_secret("REDIS_PASSWORD", required=False)
    if password is not None and "password" not in kwargs:
        kwargs["password"] = password
    username = os.environ.get("REDIS_USERNAME")
    if username and "username" not in kwargs:
        kwargs["username"] = username
    if not (cluster_mode() if cluster is None else cluster):
        return redis.Redis.from_url(target, **kwargs)
    try:  # a cluster client asks the node for the slot map now (a plain client connects on first use)
        return redis.RedisCluster.from_url(target, **kwargs)
    except (redis.RedisClusterException, redis.RedisError) as err:
        raise StoreError(
            f"cannot reach a Redis Cluster at {describe(target)}: {err}. Fix: point REDIS_URL at a node of the "
            f"cluster (`loom cluster up` prints it), or unset {CLUSTER_ENV} for a single Redis server"
        ) from err


def is_cluster(client) -> bool:
    """Whether ``client`` is a Redis Cluster client (keys must then be grouped by slot)."""
    import redis

    return isinstance(client, redis.RedisCluster)


def masters(client) -> list:
    """One single-node client per master: ``client`` itself on one server, each primary's on a cluster.

    For commands that see one node's keyspace only (``SCAN``, ``DBSIZE``): on a cluster they must go to every master.
    """
    if not is_cluster(client):
        return [client]
    return [client.get_redis_connection(node) for node in client.get_primaries()]


def describe(url: str) -> str:
    """The URL without credentials, safe for logs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def start_persistent(home: Path) -> str:
    """Start (or find) the long-lived local server used by CLI jobs."""
    existing = running_local_server(home)
    if existing:
        return existing
    folder = home / "redis"
    server = RedisServer(directory=folder, persistent=True).start()
    (folder / "url").write_text(server.url)
    (folder / "pid").write_text(str(server.process.pid))
    return server.url


def stop_persistent(home: Path) -> bool:
    """Stop the server started by :func:`start_persistent`. True if one was running."""
    folder = home / "redis"
    pid_file = folder / "pid"
    if not pid_file.is_file():
        return False
    try:
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
        stopped = True
    except ProcessLookupError:
        stopped = False
    pid_file.unlink(missing_ok=True)
    (folder / "url").unlink(missing_ok=True)
    return stopped
