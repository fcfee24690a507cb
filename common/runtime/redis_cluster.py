"""A Redis Cluster on this machine: N masters (``redis-server --cluster-enabled yes``), joined by
``redis-cli --cluster create``, each on a free port of 127.0.0.1 with a data folder of its own.

Each node is a :class:`~common.runtime.redis_server.RedisServer` (its guards: the parent-death signal and
a ``flock`` on its folder), started with cluster mode on; the 16,384 hash slots are then spread evenly over
the masters. Loom's online store reaches it with ``REDIS_URL`` set to any node and ``LOOM_REDIS_CLUSTER=1``
(redis-py's ``RedisCluster`` discovers the others).

By default the nodes keep no data, like a cache: a node started again comes back empty. With
``persistent=True`` each node keeps an append-only file synced on every write (``--appendonly yes
--appendfsync always``), so a node killed and started again (:meth:`RedisClusterServers.restart`) comes back
with every write it acknowledged, as a production node with persistence does.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError, StoreError
from common.runtime.processes import free_port
from common.runtime.redis_server import CLUSTER_ENV, RedisServer

__all__ = ["CLUSTER_ENV", "RedisClusterServers", "cluster_state"]
START_TIMEOUT_S = 30.0
# after RedisServer's own "--appendonly no": the later option wins. "always": a write is on disk before its reply
APPEND_ONLY = ("--appendonly", "yes", "--appendfsync", "always")


@dataclass
class RedisClusterServers:
    """``masters`` cluster-mode redis-servers (no replicas), children of this process, joined into one cluster."""

    directory: Path | None = None
    masters: int = 3
    stop_at_exit: bool = True  # False for `loom cluster up`: it outlives the command
    persistent: bool = False  # an append-only file per node, synced on every write (see the module docstring)
    nodes: list[RedisServer] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        """A seed node's URL; a cluster client finds the other masters from it."""
        return self.nodes[0].url

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    def start(self, timeout: float = START_TIMEOUT_S) -> RedisClusterServers:
        """Start the nodes, assign the slots, and wait until every node reports ``cluster_state:ok``."""
        if self.masters < 3:
            raise ConfigError(f"a Redis Cluster needs at least 3 masters, not {self.masters}. Fix: use 3 or more")
        if self.directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="loom-redis-cluster-")
            self.directory = Path(self._tmp.name)
        try:
            for index in range(self.masters):
                node = RedisServer(
                    directory=self.directory / f"node-{index}",
                    stop_at_exit=self.stop_at_exit,
                    # the cluster bus on a free port of its own (by default it is the port + 10,000, which
                    # a free port above 55,535 cannot have)
                    extra_args=(
                        *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                        *("--cluster-port", str(free_port())),
                        *(APPEND_ONLY if self.persistent else ()),
                    ),
                )
                self.nodes.append(node.start())
            if not self._formed():
                self._create()
            self._wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _formed(self) -> bool:
        """Whether the nodes already form a cluster (a restart on kept folders: nodes.conf holds it)."""
        return all(cluster_state(f"127.0.0.1:{node.port}") == "ok" for node in self.nodes)

    def _create(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ConfigError("redis-cli is not installed. Fix: apt-get install -y redis-tools (or redis-server)")
        command = [cli, "--cluster", "create", *self.addresses, "--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise StoreError(f"redis-cli --cluster create failed: {(done.stdout + done.stderr)[-1000:]}")

    def _wait_ok(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._formed():
            if time.monotonic() > deadline:
                raise StoreError(f"the Redis Cluster on {self.addresses} did not reach cluster_state:ok")
            time.sleep(0.1)

    def restart(self, index: int, timeout: float = START_TIMEOUT_S) -> None:
        """Start node ``index`` again on its port and folder (after it died: its ``nodes.conf`` rejoins it to the
        cluster with its slots) and wait for ``cluster_state:ok``. It comes back empty, or with ``persistent``
        with every write it acknowledged (its append-only file is replayed before it answers)."""
        old = self.nodes[index]
        old.stop()  # a live node is stopped; a dead one is only reaped
        self.nodes[index] = RedisServer(
            port=old.port, directory=old.directory, stop_at_exit=self.stop_at_exit, extra_args=old.extra_args
        ).start()
        self._wait_ok(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cluster_state(address: str) -> str | None:
    """The ``cluster_state`` (``ok`` or ``fail``) of the node at ``host:port``, None if it does not answer."""
    import redis

    host, port = address.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), socket_connect_timeout=1.0, decode_responses=True)
    try:
        return client.cluster("info").get("cluster_state")
    except redis.RedisError:
        return None
    finally:
        client.close()
