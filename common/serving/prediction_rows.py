"""The rows of the prediction log: what the request path queues, and the Arrow table it becomes.

The request path queues one :class:`LoggedRequest` per answered request (a tuple:
the cheapest record to build while the caller waits); the writer thread of
:class:`common.serving.prediction_log.PredictionLogger` turns a batch of them
into rows with :func:`rows_table`, and :func:`stamp_logged_at` sets the write
time just before each write.

Rows (one per entity): the entity key as a string (column named after the
model's entity key), ``prediction_ts`` (the lookup time of the request, UTC),
``score``, ``model_name``, ``model_version``, ``alias`` (null when the request
named the version), ``known``, ``missing`` (names of the features passed as
NaN), ``request_id``, ``client`` (the API key's name, never the key) and
``logged_at`` (when the row was written). No feature value.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

UTC_US = pa.timestamp("us", tz="UTC")


class LoggedRequest(NamedTuple):
    """One answered prediction request, as queued by the request path (turned into rows later;
    a tuple: the cheapest record to build on the hot path)."""

    request_id: str
    at_us: int  # the lookup time, epoch microseconds UTC
    client: str  # the API key's name
    model: str
    version: int
    alias: str | None
    entity_key: str
    keys: Sequence[Any]
    scores: np.ndarray
    event_times_us: dict[str, np.ndarray]  # group -> per entity, -1 when absent or stale
    missing: Sequence[Sequence[str]]


def rows_table(records: Sequence[LoggedRequest], logged_at_us: int | None = None) -> pa.Table:
    """The Delta rows of ``records``: one per entity, in request order among requests that read the
    same feature groups.

    Built with list extends and one numpy operation per feature group, not per request: the
    writer thread holds the GIL meanwhile, and requests wait for it.
    """
    key_columns = list(dict.fromkeys(r.entity_key for r in records))
    keys: dict[str, list[Any]] = {name: [] for name in key_columns}
    at: list[int] = []
    request_ids: list[str] = []
    clients: list[str] = []
    models: list[str] = []
    versions: list[int] = []
    aliases: list[str | None] = []
    missing: list[Sequence[str]] = []
    scores: list[np.ndarray] = []
    known: list[np.ndarray] = []
    by_groups: dict[tuple[str, ...], list[LoggedRequest]] = {}
    for r in records:
        by_groups.setdefault(tuple(r.event_times_us), []).append(r)
    for groups, same in by_groups.items():
        for r in same:
            n = len(r.keys)
            for name, column in keys.items():
                column.extend(map(str, r.keys) if name == r.entity_key else [None] * n)  # str: keys may be numbers
            at += [r.at_us] * n
            request_ids += [r.request_id] * n
            clients += [r.client] * n
            models += [r.model] * n
            versions += [r.version] * n
            aliases += [r.alias] * n
            missing += r.missing
            scores.append(r.scores)
        seen = np.zeros(sum(len(r.keys) for r in same), dtype=bool)
        for group in groups:
            seen |= np.concatenate([r.event_times_us[group] for r in same]) >= 0
        known.append(seen)
    logged = time.time_ns() // 1000 if logged_at_us is None else logged_at_us
    columns = {name: pa.array(values, pa.string()) for name, values in keys.items()}
    columns.update(
        {
            "prediction_ts": pa.array(at, UTC_US),  # epoch microseconds: no cast kernel
            "score": pa.array(np.concatenate(scores).astype("float64"), pa.float64(), from_pandas=True),  # NaN: null
            "model_name": pa.array(models, pa.string()),
            "model_version": pa.array(versions, pa.int32()),
            "alias": pa.array(aliases, pa.string()),
            "known": pa.array(np.concatenate(known), pa.bool_()),
            "missing": pa.array(missing, pa.list_(pa.string())),
            "request_id": pa.array(request_ids, pa.string()),
            "client": pa.array(clients, pa.string()),
            "logged_at": pa.array(np.full(len(at), logged, dtype="int64"), UTC_US),
        }
    )
    return pa.table(columns)


def stamp_logged_at(table: pa.Table) -> pa.Table:
    """``table`` with ``logged_at`` set to now (the moment it is written)."""
    now = pa.array(np.full(table.num_rows, time.time_ns() // 1000, dtype="int64"), UTC_US)
    return table.set_column(table.schema.get_field_index("logged_at"), "logged_at", now)
