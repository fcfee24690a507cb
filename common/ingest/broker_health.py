"""Why a Kafka source's stream stopped: a broker that no longer answers becomes one clear error.

Spark's Kafka source waits ``broker_timeout`` for an unreachable broker (common.ingest.readers.kafka_timeouts),
then fails the query with the Kafka client's ``TimeoutException`` and a page of stack trace. When that happens
and no bootstrap server accepts a connection, the job says so in one line instead: which source, which servers,
that nothing is lost, and how to resume.
"""

from __future__ import annotations

from common.errors import ConfigError, shorten
from common.ingest.readers import kafka_bootstrap_of
from common.runtime.kafka_server import port_open
from common.spec.sources import Source

PROBE_TIMEOUT_S = 2.0


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port`` pairs of a bootstrap list (a listener prefix such as ``SASL_SSL://`` dropped)."""
    found = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition("://")[2].rpartition(":")
        if host and port.isdigit():
            found.append((host.strip("[]"), int(port)))
    return found


def unreachable(bootstrap: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether no ``host:port`` of ``bootstrap`` accepts a TCP connection (a malformed list counts as unreachable)."""
    return not any(port_open(port, host, timeout_s) for host, port in _servers(bootstrap))


def broker_outage(name: str, source: Source) -> ConfigError | None:
    """The error for Kafka source ``name`` when none of its brokers answers now; None when one does (or the
    source is not Kafka, or its bootstrap variable is not set: that has its own message)."""
    if source.format != "kafka":
        return None
    try:
        bootstrap = kafka_bootstrap_of(source)
    except ConfigError:
        return None
    if not unreachable(bootstrap):
        return None
    settings = source.kafka
    return ConfigError(
        f"source {name!r}: no Kafka broker of ${settings.bootstrap_env} ({shorten(bootstrap)}) answered within "
        f"sources.{name}.kafka.broker_timeout ({settings.broker_timeout}), so the stream stopped. Nothing is lost: "
        "the next run resumes from the checkpoint's offsets. Fix: bring the broker back (or point "
        f"${settings.bootstrap_env} at one that answers) and run the job again; a longer broker_timeout rides out "
        "longer outages"
    )
