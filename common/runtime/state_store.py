"""Spark's state store for Loom's stateful streaming queries (feature tiles, trigger matches).

RocksDB keeps the state off the JVM heap, so millions of entities fit, and ``transformWithState`` needs it.
Changelog checkpointing makes a micro-batch upload the keys it changed, not a snapshot of the whole state.
The settings are made on the session only while a stateful query starts (Spark keeps the provider in the
query's checkpoint for restarts), so Loom's other queries and jobs keep the session's defaults.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from pyspark.sql import SparkSession

from common.runtime.spark import session_conf

STATE_STORE_CONF = {
    "spark.sql.streaming.stateStore.providerClass": (
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
    ),
    "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
}


def rocksdb_state_store(spark: SparkSession, enabled: bool = True) -> AbstractContextManager[None]:
    """While the block runs (start the stateful query in it), the session uses :data:`STATE_STORE_CONF`;
    the previous settings come back after. ``enabled=False`` changes nothing."""
    return session_conf(spark, STATE_STORE_CONF if enabled else {})
