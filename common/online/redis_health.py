"""Why a stream that writes to Redis stopped: a Redis server or Redis Cluster node that no longer answers
becomes one clear error.

When a node dies during a micro-batch, the executors' guarded writes fail (a StoreError on the executor),
Spark fails the batch and the query stops with Spark's exception: pages of Java and Python stack traces. When
that happens and Redis (the server, or a master of the cluster) does not answer now, the job says so in one
line instead: which node, that nothing of the stream is lost, and how to resume (as
:mod:`common.ingest.broker_health` does for a Kafka broker).
"""

from __future__ import annotations

from common.errors import StoreError

PROBE_TIMEOUT_S = 2.0


def _address(connection_kwargs: dict) -> str:
    return f"{connection_kwargs.get('host', '?')}:{connection_kwargs.get('port', '?')}"


def silent_nodes(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """``host:port`` of every node of the online store at ``url`` that does not answer a PING now: the server,
    or each master of the Redis Cluster (``LOOM_REDIS_CLUSTER``); the node of ``url`` itself when a cluster
    client cannot start from it (then the masters are unknown)."""
    import redis

    from common.runtime.redis_server import connect, masters

    try:
        client = connect(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    except StoreError:  # connect() asks the cluster's node for the slot map: that node does not answer
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        return [f"{parts.hostname}:{parts.port or 6379}"]
    silent = []
    try:
        for node in masters(client):
            try:
                node.ping()
            except redis.AuthenticationError:
                continue  # it answers: a credentials problem is not an outage
            except (redis.ConnectionError, redis.TimeoutError):  # loading its data counts too (BusyLoadingError)
                silent.append(_address(node.connection_pool.connection_kwargs))
            except redis.RedisError:
                continue  # it answers, with an error: not an outage, and the query's own error is the one to show
    finally:
        client.close()
    return silent


def store_outage(url: str, query: str, usecase: str) -> StoreError | None:
    """The error for streaming query ``query`` of ``usecase``, which failed, when a node of the online store at
    ``url`` does not answer now; None when every node answers (the query failed for another reason)."""
    from common.runtime.redis_server import cluster_mode, describe

    silent = silent_nodes(url)
    if not silent:
        return None
    kind = "Redis Cluster master" if cluster_mode() else "Redis server"
    nodes = f"{kind}{'s' if len(silent) > 1 else ''} {', '.join(silent[:5])}"
    return StoreError(
        f"the online store's {nodes} (REDIS_URL {describe(url)}) does not answer, so query {query!r} stopped "
        "in a micro-batch. Nothing of the stream is lost: the failed batch is done again from the checkpoint "
        "when the stream runs again, and its writes are idempotent. Fix: bring the node back (restart it, or "
        "let a replica take over) and run the job again; if it came back without its data (no persistence "
        f"or replica), also run `loom materialize --usecase {usecase}` to refill its keys from the history"
    )
