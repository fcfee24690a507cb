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
from itertools import chain, compress
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


ROWS_PER_SLICE = 1_000  # requests per slice of rows_table: each of its C calls then holds the GIL well under 1 ms


def rows_table(records: Sequence[LoggedRequest], logged_at_us: int | None = None) -> pa.Table:
    """The Delta rows of ``records``: one per entity, in request order.

    The writer thread holds the GIL while it builds them, and requests wait for it: a
    Python loop over 10,000 queued requests took 20-35 ms, in 5 ms slices (the interpreter's
    switch interval) that each stalled the requests behind them. Now the records are
    transposed in C (``zip``), per-request values are repeated per entity with one Arrow
    ``take``, the only Python-level loop left is over feature groups, and the work goes in
    slices of :data:`ROWS_PER_SLICE` requests, so that no single C call holds the GIL long
    (the server also shortens the switch interval: :func:`common.serving.app.app_from_env`).
    """
    logged = time.time_ns() // 1000 if logged_at_us is None else logged_at_us
    slices = [_slice_table(records[i : i + ROWS_PER_SLICE], logged) for i in range(0, len(records), ROWS_PER_SLICE)]
    return slices[0] if len(slices) == 1 else pa.concat_tables(slices, promote_options="default")


def _slice_table(records: Sequence[LoggedRequest], logged: int) -> pa.Table:
    """The rows of a few requests (see :func:`rows_table`)."""
    (request_ids, at, clients, models, versions, aliases, entity_keys, keys, scores, times, missing) = zip(
        *records, strict=True
    )
    counts = np.fromiter(map(len, keys), dtype=np.int64, count=len(records))
    per_row = pa.array(np.repeat(np.arange(len(records)), counts))

    def repeated(values: Sequence[Any], kind: pa.DataType) -> pa.Array:
        return pa.array(values, kind).take(per_row)

    # str: keys may be numbers
    flat_keys = pa.array(map(str, chain.from_iterable(keys)), pa.string(), size=int(counts.sum()))
    columns = {name: _key_column(name, entity_keys, flat_keys, counts) for name in dict.fromkeys(entity_keys)}
    columns.update(
        {
            "prediction_ts": repeated(at, UTC_US),  # epoch microseconds: no cast kernel
            "score": pa.array(np.concatenate(scores).astype("float64"), pa.float64(), from_pandas=True),  # NaN: null
            "model_name": repeated(models, pa.string()),
            "model_version": repeated(versions, pa.int32()),
            "alias": repeated(aliases, pa.string()),
            "known": pa.array(_known(times, counts), pa.bool_()),
            "missing": pa.array(chain.from_iterable(missing), pa.list_(pa.string()), size=len(flat_keys)),
            "request_id": repeated(request_ids, pa.string()),
            "client": repeated(clients, pa.string()),
            "logged_at": pa.array(np.full(len(flat_keys), logged, dtype="int64"), UTC_US),
        }
    )
    return pa.table(columns)


def _key_column(name: str, entity_keys: Sequence[str], flat_keys: pa.Array, counts: np.ndarray) -> pa.Array:
    """The column of entity key ``name``: the keys of requests for a model keyed by it, null elsewhere."""
    mine = np.fromiter(map(name.__eq__, entity_keys), dtype=bool, count=len(entity_keys))
    if mine.all():
        return flat_keys
    return pc.if_else(pa.array(np.repeat(mine, counts)), flat_keys, pa.scalar(None, pa.string()))


def _known(times: Sequence[dict[str, np.ndarray]], counts: np.ndarray) -> np.ndarray:
    """Per entity: was any of its request's feature groups found (event time >= 0)?"""
    groups = list(map(tuple, times))
    known = np.zeros(int(counts.sum()), dtype=bool)
    for names in dict.fromkeys(groups):  # one set of groups per model served: usually one
        mine = np.fromiter(map(names.__eq__, groups), dtype=bool, count=len(groups))
        subset = list(compress(times, mine))
        seen = np.zeros(int(counts[mine].sum()), dtype=bool)
        for group in names:
            seen |= np.concatenate(list(map(itemgetter(group), subset))) >= 0
        known[np.repeat(mine, counts)] = seen
    return known


def stamp_logged_at(table: pa.Table) -> pa.Table:
    """``table`` with ``logged_at`` set to now (the moment it is written)."""
    now = pa.array(np.full(table.num_rows, time.time_ns() // 1000, dtype="int64"), UTC_US)
    return table.set_column(table.schema.get_field_index("logged_at"), "logged_at", now)
