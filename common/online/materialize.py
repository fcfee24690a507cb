"""Spark DataFrame -> Redis online store, in parallel on the executors.

Each task receives its partition as Arrow record batches (``mapInArrow``),
encodes every batch with numpy in one go and sends it through the Redis
event-time guard (chunked ``EVALSHA`` calls, pipelined) over its own
connection, cached per Python worker. Each task returns one row of counts, which the driver
sums: nothing but those counts comes back to the driver. A small micro-batch already collected to the driver
as Arrow (for its delta-rs history append) is written from there instead, through the same encoding and guard:
no Spark job.

Works the same for a batch DataFrame and for the micro-batch DataFrame of a
streaming ``foreachBatch``; re-running a batch is harmless (equal event times
overwrite with the same bytes, older ones are skipped).

Rows without an entity key (null or empty) or without an event time cannot be
written. They are counted; with ``on_invalid="raise"`` (default) a DataError
is raised after the valid rows were written, with ``"skip"`` a warning is logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from common.errors import ConfigError, DataError
from common.online.base import OnlineGroup, WriteResult
from common.online.redis_store import DEFAULT_CHUNK, DEFAULT_PIPELINE_DEPTH, RedisOnlineStore, key_prefix

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

COUNTS_SCHEMA = "written long, skipped long, invalid long"

# One client per (server, credentials, cluster) per process: Python workers are reused across tasks, and the
# driver of a stream writes its small batches itself, batch after batch.
_CLIENTS: dict[tuple[str, str | None, str | None, bool], Any] = {}


def write_features_to_online_store(
    df: DataFrame | pa.Table,
    *,
    usecase: str,
    version: int,
    group: str,
    feature_names: Sequence[str],
    entity_column: str,
    event_time_column: str,
    redis_url: str | None = None,
    ttl_seconds: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    prefix: str | None = None,
    on_invalid: Literal["raise", "skip"] = "raise",
) -> WriteResult:
    """Write the latest vector of each row's entity into Redis; returns (written, skipped as older).

    ``df`` holds one row per entity (and event time) with ``entity_column``,
    ``event_time_column`` (timestamp or date, or integer epoch microseconds) and the
    ``feature_names`` columns (numeric; null is stored as NaN = missing). A Spark DataFrame is written by
    the executors; a pyarrow Table, rows already on the driver (a small micro-batch collected once for the
    online store and the offline history), from this process, with no Spark job.
    ``redis_url`` defaults to :func:`common.runtime.redis_server.redis_url`; it is
    shipped to the executors with the password from ``REDIS_PASSWORD`` and is never logged.
    So is the driver's ``LOOM_REDIS_CLUSTER``: executors need none of these variables.
    """
    spec = OnlineGroup(group, tuple(feature_names), ttl_seconds)
    available = list(df.column_names if _is_arrow(df) else df.columns)
    absent = [c for c in [entity_column, event_time_column, *spec.feature_names] if c not in available]
    if absent:
        raise DataError(
            f"online materialization of group {group!r}: columns {absent} are missing. "
            f"Fix: select them before writing (the rows have {available})"
        )
    if on_invalid not in ("raise", "skip"):
        raise ConfigError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
    url, credentials, cluster = _connection(redis_url)
    prefix = prefix or key_prefix(usecase, version)
    if _is_arrow(df):
        selected = _arrow_selected(df, spec, entity_column, event_time_column)
        store = RedisOnlineStore(
            client=_client(url, *credentials, cluster),
            cluster=cluster,
            prefix=prefix,
            groups=[spec],
            chunk=chunk,
            pipeline_depth=DEFAULT_PIPELINE_DEPTH,
        )
        counts = [0, 0, 0]
        for batch in selected.combine_chunks().to_batches():
            result, bad = write_batch(store, spec, batch)
            counts = [counts[0] + result.written, counts[1] + result.skipped, counts[2] + bad]
    else:
        selected = _spark_selected(df, spec, entity_column, event_time_column)
        writer = _PartitionWriter(
            url=url, credentials=credentials, cluster=cluster, prefix=prefix, group=spec, chunk=chunk
        )
        rows = selected.mapInArrow(writer, COUNTS_SCHEMA).collect()
        counts = [sum(r.written for r in rows), sum(r.skipped for r in rows), sum(r.invalid for r in rows)]
    return _reported(url, spec, entity_column, event_time_column, *counts, on_invalid=on_invalid)


def _is_arrow(rows: Any) -> bool:
    return type(rows).__module__.startswith("pyarrow")


def _not_numeric(group: str, columns: list[str]) -> DataError:
    return DataError(
        f"online materialization of group {group!r}: features {columns} are not numeric; the online "
        "store holds float64 vectors. Fix: cast or encode them to numbers in the feature group"
    )


def _bad_time(group: str, column: str, kind: str) -> DataError:
    return DataError(
        f"online materialization of group {group!r}: event time column {column!r} "
        f"is {kind}. Fix: use a timestamp (or integer epoch microseconds)"
    )


def _spark_selected(df: DataFrame, spec: OnlineGroup, entity_column: str, event_time_column: str) -> DataFrame:
    """The rows as (entity string, event_time, f0..fN-1 doubles), checked: the executors' input."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    not_numeric = [
        f"{name} ({df.schema[name].dataType.simpleString()})"
        for name in spec.feature_names
        if not isinstance(df.schema[name].dataType, T.NumericType | T.BooleanType)
    ]
    if not_numeric:
        raise _not_numeric(spec.name, not_numeric)
    time_type = df.schema[event_time_column].dataType
    if isinstance(time_type, T.DateType):
        time_col = F.col(event_time_column).cast("timestamp")
    elif isinstance(time_type, T.TimestampType | T.TimestampNTZType | T.IntegralType):
        time_col = F.col(event_time_column)
    else:
        raise _bad_time(spec.name, event_time_column, time_type.simpleString())
    return df.select(
        F.col(entity_column).cast("string").alias("entity"),
        time_col.alias("event_time"),
        *[F.col(name).cast("double").alias(f"f{i}") for i, name in enumerate(spec.feature_names)],
    )


def _arrow_selected(table: pa.Table, spec: OnlineGroup, entity_column: str, event_time_column: str) -> pa.Table:
    """:func:`_spark_selected` for an Arrow table on the driver, the event time as epoch microseconds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def numeric(kind: pa.DataType) -> bool:
        return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)

    kinds = {field.name: field.type for field in table.schema}
    not_numeric = [f"{name} ({kinds[name]})" for name in spec.feature_names if not numeric(kinds[name])]
    if not_numeric:
        raise _not_numeric(spec.name, not_numeric)
    times, kind = table.column(event_time_column), kinds[event_time_column]
    if pa.types.is_date(kind):
        times = pc.cast(times, pa.timestamp("us")).cast(pa.int64())
    elif pa.types.is_timestamp(kind):
        times = pc.cast(times, pa.timestamp("us", tz=kind.tz)).cast(pa.int64())
    elif not pa.types.is_integer(kind):
        raise _bad_time(spec.name, event_time_column, str(kind))
    return pa.table(
        [pc.cast(table.column(entity_column), pa.string()), times]
        + [pc.cast(table.column(name), pa.float64()) for name in spec.feature_names],
        names=["entity", "event_time", *[f"f{i}" for i in range(len(spec.feature_names))]],
    )


def _connection(redis_url: str | None) -> tuple[str, tuple[str | None, str | None], bool]:
    """The server's URL, the credentials from the environment (never logged) and whether it is a cluster."""
    from common.runtime.redis_server import cluster_mode
    from common.runtime.redis_server import redis_url as default_url
    from common.runtime.secrets import read_secret

    credentials = (read_secret("REDIS_PASSWORD", required=False), os.environ.get("REDIS_USERNAME"))
    return redis_url or default_url(), credentials, cluster_mode()


def _reported(
    url: str,
    spec: OnlineGroup,
    entity_column: str,
    event_time_column: str,
    written: int,
    skipped: int,
    invalid: int,
    *,
    on_invalid: str,
) -> WriteResult:
    """Log a write's counts; rows that could not be written raise (``on_invalid="raise"``) or warn."""
    from common.runtime.redis_server import describe

    log.info(
        "online store %s group %s: %d written, %d skipped as older, %d invalid",
        describe(url),
        spec.name,
        written,
        skipped,
        invalid,
    )
    if invalid:
        message = (
            f"{invalid} row(s) of group {spec.name!r} have no entity key ({entity_column!r} null or empty) "
            f"or no event time ({event_time_column!r} null) and were not written to the online store"
        )
        if on_invalid == "raise":
            raise DataError(f"{message}. Fix: filter them out upstream, or pass on_invalid='skip'")
        log.warning(message)
    return WriteResult(written, skipped)


class _PartitionWriter:
    """The mapInArrow function: picklable, holds no connection (opened on the executor)."""

    def __init__(
        self,
        *,
        url: str,
        credentials: tuple[str | None, str | None],
        cluster: bool,
        prefix: str,
        group: OnlineGroup,
        chunk: int,
    ) -> None:
        self.url = url
        self.credentials = credentials
        self.cluster = cluster
        self.prefix = prefix
        self.group = group
        self.chunk = chunk

    def __repr__(self) -> str:  # Spark may print the function in plans and errors: no URL, no password
        return f"_PartitionWriter(group={self.group.name!r}, prefix={self.prefix!r})"

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        store = RedisOnlineStore(
            client=_client(self.url, *self.credentials, self.cluster),
            cluster=self.cluster,
            prefix=self.prefix,
            groups=[self.group],
            chunk=self.chunk,
            pipeline_depth=DEFAULT_PIPELINE_DEPTH,
        )
        written = skipped = invalid = 0
        for batch in batches:
            result, bad = write_batch(store, self.group, batch)
            written += result.written
            skipped += result.skipped
            invalid += bad
        yield pa.RecordBatch.from_pydict(
            {"written": [written], "skipped": [skipped], "invalid": [invalid]},
            schema=pa.schema([("written", pa.int64()), ("skipped", pa.int64()), ("invalid", pa.int64())]),
        )


def write_batch(store: RedisOnlineStore, group: OnlineGroup, batch: pa.RecordBatch) -> tuple[WriteResult, int]:
    """Write one Arrow batch (entity, event_time, f0..fN-1); returns the result and the invalid row count."""
    import pyarrow as pa
    import pyarrow.compute as pc

    entity, event_time = batch.column(0), batch.column(1)
    valid = pc.and_(pc.and_(entity.is_valid(), pc.greater(pc.utf8_length(entity), 0)), event_time.is_valid())
    valid = pc.fill_null(valid, False)
    invalid = len(batch) - pc.sum(valid).as_py() if len(batch) else 0
    if invalid:
        batch = batch.filter(valid)
    if not len(batch):
        return WriteResult(0, 0), invalid
    keys = store.encoded_keys(batch.column(0).to_pylist(), group.name)
    times = batch.column(1).cast(pa.int64()).to_numpy()
    matrix = np.column_stack([batch.column(i).to_numpy(zero_copy_only=False) for i in range(2, batch.num_columns)])
    return store.write_encoded(group, keys, matrix, times), invalid


def _client(url: str, password: str | None, username: str | None, cluster: bool) -> Any:
    from common.runtime.redis_server import connect

    cache_key = (url, password, username, cluster)
    client = _CLIENTS.get(cache_key)
    if client is None:
        kwargs = {k: v for k, v in (("password", password), ("username", username)) if v is not None}
        client = _CLIENTS[cache_key] = connect(url, cluster=cluster, **kwargs)
    return client
