"""One entity's window state: the tiles its features need, folded event by event (pure Python, no Spark).

The streaming feature operator keeps one :class:`TileState` per entity in Spark's state store and folds each
micro-batch's events into it, so a batch costs in proportion to its own events: bronze is never re-read.

The partials and their merge are those of :mod:`common.compile.aggregates` (the batch engine's), written for
Python values:

* ``n`` counts the rows that count, ``s`` sums their values, ``ss`` their squares (``sum``/``avg``/``stddev``);
* ``m`` is the least or greatest value (``min``/``max``);
* ``set`` holds the distinct values (``count_distinct``);
* ``last`` is the greatest ``(time µs, event id, value)`` (``last``).

A tile is the slide ``s`` long; the value at the entity's newest event ``t`` merges the tiles in
``[tile(t) + s - W, tile(t)]`` for each window ``W`` (docs/time-semantics.md), exactly as
:func:`common.features.windows.latest` does from the batch's tiles. Tiles older than the longest window before the
newest event can no longer change any online value, so they are evicted: the state is bounded per entity. An
event older than that horizon is not folded (it still is in bronze; the backfill counts it in the offline history).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.compile.aggregates import PARTIALS, AggPlan

# one tile: per aggregation, its partials in PARTIALS order (None = no row counted yet)
Tile = list[list[Any]]


def _is_null(value: Any) -> bool:
    # the operator's JSON rows leave nulls out; a NaN (only from a caller's own values: validation refuses NaN
    # in data, and the stream's JSON parse would fail on one) counts as "no value" too
    return value is None or (isinstance(value, float) and math.isnan(value))


def _empty(agg: AggPlan) -> list[Any]:
    return [0.0 if suffix == "n" else None for suffix, _ in PARTIALS[agg.agg]]


def _add_count(partials: list[Any], value: Any, ts_us: int, event_id: str) -> None:
    partials[0] += 1.0


def _add_sum(partials: list[Any], value: Any, ts_us: int, event_id: str) -> None:
    partials[0] += 1.0
    partials[1] = value if partials[1] is None else partials[1] + value


def _add_squares(partials: list[Any], value: Any, ts_us: int, event_id: str) -> None:
    _add_sum(partials, value, ts_us, event_id)
    partials[2] = value * value if partials[2] is None else partials[2] + value * value


def _add_min(partials: list[Any], value: Any, ts_us: int, event_id: str) -> None:
    partials[0] = value if partials[0] is None else min(partials[0], value)


def _add_max(partials: list[Any], value: Any, ts_us: int, event_id: str) -> None:
    partials[0] = value if partials[0] is None else max(partials[0], value)


def _add_distinct(partials: list[Any], value: Any, ts_us: int, event_id: str) -> None:
    if partials[0] is None:
        partials[0] = [value]
    elif value not in partials[0]:
        partials[0].append(value)


def _add_last(partials: list[Any], value: Any, ts_us: int, event_id: str) -> None:
    candidate = [ts_us, event_id, value]  # greatest (time, id, value), as Spark orders the struct
    if partials[0] is None or candidate > partials[0]:
        partials[0] = candidate


# how one row's contribution folds into an aggregation's partials (in place)
ADDERS = {
    "count": _add_count,
    "sum": _add_sum,
    "avg": _add_sum,
    "stddev": _add_squares,
    "min": _add_min,
    "max": _add_max,
    "count_distinct": _add_distinct,
    "last": _add_last,
}


def _merge_window(agg: AggPlan, index: int, tiles: Iterable[Tile]) -> list[Any]:
    """The partials of aggregation ``index`` merged over ``tiles``."""
    merged = _empty(agg)
    distinct: set[Any] = set()
    for tile in tiles:
        partials = tile[index]
        for i, (_, kind) in enumerate(PARTIALS[agg.agg]):
            value = partials[i]
            if value is None:
                continue
            if kind == "sum":
                merged[i] = value if merged[i] is None else merged[i] + value
            elif kind == "min":
                merged[i] = value if merged[i] is None else min(merged[i], value)
            elif kind in ("max", "last"):
                merged[i] = value if merged[i] is None else max(merged[i], value)
            else:  # set
                distinct.update(value)
    if agg.agg == "count_distinct":
        merged[0] = distinct
    return merged


def _finish(agg: AggPlan, merged: list[Any]) -> float | None:
    """The feature's value from its merged partials: :meth:`AggPlan.finish`, in Python."""
    kind = agg.agg
    if kind == "count":
        return float(merged[0])
    n = merged[0] if kind in ("sum", "avg", "stddev") else None
    if kind == "sum":
        return float(merged[1]) if n and merged[1] is not None else 0.0
    if kind == "avg":
        return merged[1] / n if n else None
    if kind == "stddev":
        if n is None or n < 2:
            return None
        s, ss = merged[1], merged[2]
        return math.sqrt(max((ss - s * s / n) / (n - 1), 0.0))
    if kind in ("min", "max"):
        return None if merged[0] is None else float(merged[0])
    if kind == "count_distinct":
        return float(len(merged[0]))
    return None if merged[0] is None else float(merged[0][2])


def _add(adders: Sequence[Any], tile: Tile, ts_us: int, event_id: str, values: Mapping[int, Any]) -> None:
    """One event's row values folded into ``tile`` (in place)."""
    for index, value in values.items():
        if not _is_null(value):
            adders[index](tile[index], value, ts_us, event_id)


@dataclass
class TileState:
    """An entity's tiles (tile start, epoch seconds -> partials) and its newest event time."""

    newest_us: int = -1
    tiles: dict[int, Tile] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"n": self.newest_us, "t": [[start, tile] for start, tile in self.tiles.items()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TileState:
        return cls(int(data["n"]), {int(start): tile for start, tile in data["t"]})


@dataclass(frozen=True)
class TileFolder:
    """Folds rows into :class:`TileState` s and reads the features at the newest event, for one group."""

    aggregations: Sequence[AggPlan]
    slide_s: int

    @property
    def horizon_s(self) -> int:
        """How far before the newest event's tile a tile can still count: the longest window."""
        return max((a.window_s for a in self.aggregations), default=self.slide_s)

    def tile_of(self, ts_us: int) -> int:
        return (ts_us // 1_000_000 // self.slide_s) * self.slide_s

    def oldest_kept(self, state: TileState) -> int:
        """Start of the oldest tile an online value can still read."""
        return self.tile_of(state.newest_us) + self.slide_s - self.horizon_s

    def fold(
        self, state: TileState, events: Sequence[tuple[int, str, Mapping[int, Any]]], oldest: int | None = None
    ) -> int:
        """Fold events into ``state``: (time µs, event id, {aggregation index: row value}); an aggregation
        the row does not count for is absent or null. Returns the events folded.

        Events older than the state's horizon (``oldest``, a tile start; default :meth:`oldest_kept`) are
        skipped (they cannot change the online value) and older tiles are dropped. They are
        folded in (time, id) order, not in the order given: a shuffle delivers a micro-batch's rows in any
        order, and a float sum depends on it in its last bit, so a replayed batch must fold the same way.
        """
        events = sorted(events, key=lambda event: (event[0], event[1]))
        if events:
            state.newest_us = max(state.newest_us, max(event[0] for event in events))
        oldest = self.oldest_kept(state) if oldest is None else oldest
        adders = [ADDERS[agg.agg] for agg in self.aggregations]
        folded = 0
        for ts, event_id, values in events:
            start = self.tile_of(ts)
            if start < oldest:
                continue
            tile = state.tiles.get(start)
            if tile is None:
                tile = state.tiles[start] = [_empty(agg) for agg in self.aggregations]
            folded += 1
            _add(adders, tile, ts, event_id, values)
        for start in [s for s in state.tiles if s < oldest]:
            del state.tiles[start]
        return folded

    def values_at(
        self, state: TileState, ts_us: int, recent: Iterable[tuple[int, str, Mapping[int, Any]]]
    ) -> list[float | None]:
        """Each feature's value at time ``ts_us`` (docs/time-semantics.md): the whole tiles before the tile of
        ``ts_us`` from ``state``, and that tile's events up to and including ``ts_us`` from ``recent`` (the
        events folded into it, which its partials alone cannot split at ``ts_us``).

        At the newest event with every event of its tile in ``recent``, this is :meth:`values`.
        """
        at_tile = self.tile_of(ts_us)
        adders = [ADDERS[agg.agg] for agg in self.aggregations]
        prefix = [_empty(agg) for agg in self.aggregations]
        inside_tile = [e for e in recent if e[0] <= ts_us and self.tile_of(e[0]) == at_tile]
        for ts, event_id, values in sorted(inside_tile, key=lambda event: (event[0], event[1])):
            _add(adders, prefix, ts, event_id, values)
        out = []
        for index, agg in enumerate(self.aggregations):
            start = at_tile + self.slide_s - agg.window_s
            before = [state.tiles[at] for at in sorted(state.tiles) if start <= at < at_tile]
            out.append(_finish(agg, _merge_window(agg, index, [*before, prefix])))
        return out

    def values(self, state: TileState) -> list[float | None]:
        """Each feature's value at the entity's newest event."""
        newest_tile = self.tile_of(state.newest_us)
        # tiles in time order whatever order they were created in: float sums then do not depend on it. Sorted
        # once, each window a slice of them (one per window length), not a sort and a scan per aggregation
        starts = sorted(state.tiles)
        end = bisect_right(starts, newest_tile)
        windows: dict[int, list[Tile]] = {}
        out = []
        for index, agg in enumerate(self.aggregations):
            inside = windows.get(agg.window_s)
            if inside is None:
                first = bisect_left(starts, newest_tile + self.slide_s - agg.window_s, 0, end)
                inside = windows[agg.window_s] = [state.tiles[at] for at in starts[first:end]]
            out.append(_finish(agg, _merge_window(agg, index, inside)))
        return out
