"""The trigger operator that also holds the entity's tiles: a firing carries its features from state.

For a source with triggers, one ``transformWithState`` operator per entity keeps both the triggers'
:class:`~common.triggers.matcher.TriggerState` and, for every events group of that source and entity, the
group's :class:`~common.features.tile_state.TileState` (the feature stream's fold, same functions, same rows:
:func:`common.features.streaming.tile_rows`). A firing is emitted with each such group's feature values at the
firing event (:meth:`TileFolder.values_at`): the value the history holds at that time, so batch scoring, the
point-in-time join and REST read the same number. Scoring then re-reads bronze only for the model's other
groups (table groups such as a profile, events groups of other sources).

Input: the union of the trigger's condition rows (:func:`~common.triggers.operator.condition_events`, event
time kept) and every event's tile row of each group (event time null). Spark drops rows older than the
watermark before a stateful operator only by their event-time column, and a null time is never late: the
triggers see exactly the events they see alone, and the tiles see every event (nothing is dropped for being
late, docs/time-semantics.md).

What the state keeps so that any firing still to come can be valued exactly. A firing's event is newer than
the watermark of the batch before it (Spark drops older condition rows), so with the watermark ``w`` of the
entity's latest batch:

* the tiles from ``tile(w) + slide - longest window`` on (older ones can be in no window of a later firing;
  events in them are skipped, as the feature stream skips those older than its horizon);
* each event of the tiles that end after ``w`` (a firing inside a tile reads that tile's events up to it:
  the tile's partials cannot be split at a time).

Events are folded before the batch's firings are valued, in (time, id) order; the firing event itself counts,
and so does every event at the same time (docs/time-semantics.md). One event-time timer clears the entity once
the watermark has passed what its triggers and its tiles could still matter for.

With ``vectors`` (``loom stream`` running features and triggers together), the operator also does the feature
stream's work for the groups it carries, so their events are folded once, not in two queries: for every entity
whose tiles a batch changed, it emits the group's features at the entity's newest event (the feature stream's
``OUT``, as :class:`~common.features.streaming.TileProcessor` emits them), and it keeps what that operator keeps. A tile
stays while the newest event's longest window reaches it, even after the watermark passed it, and the timer
then clears the triggers' state but never the tiles: a late event within that window updates the vector
exactly (docs/time-semantics.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle
from pyspark.sql.types import BinaryType, StructField, StructType

from common.compile.event_time import from_micros
from common.compile.plan import EVENT_ID, TS_MICROS, GroupPlan, Plan
from common.compile.triggers import TriggerPlan
from common.features.streaming import OUT, ROW, tile_rows
from common.features.tile_state import TileFolder, TileState
from common.settings import Paths
from common.triggers.matcher import TriggerState, advance, is_empty
from common.triggers.operator import FIRING_TS, _rule, condition_events, keep_one_timer

FEATURES = "_features"  # JSON {group: {feature: value}}: each carried group's values at the firing event
GROUP = "_group"  # input rows: the group index of a tile row, -1 for a trigger row; output: a vector's group
TRIGGER_ROW = "_trigger_row"  # input rows: JSON [µs, event id, one boolean per condition] of a trigger row
# a firing row has a trigger; a vector row (``vectors`` only) has the carried group's index (GROUP) and the
# feature stream's OUT instead (the entity's newest event µs, then the group's features)
SHARED_FIRING_SCHEMA = (
    f"{{key}} string, trigger string, firing_ts timestamp, event_id string, _features string, {GROUP} int, {OUT} string"
)
# orjson: {"t": triggers, "g": [group state], "w": the entity's timer (ms) or null}; no state, no timer
STATE = StructType([StructField("state", BinaryType())])
UNKNOWN_TIMER = object()  # a state without "w" (written by an earlier version): the timers must be listed


def carried_groups(plan: Plan, triggers: Sequence[TriggerPlan]) -> list[GroupPlan]:
    """The events groups whose tiles the triggers' operator holds: those of the triggers' source and entity."""
    first = triggers[0]
    return [
        group
        for group in plan.groups.values()
        if group.source_kind == "events"
        and group.source == first.source
        and group.entity_key == first.entity_key
        and group.aggregations
    ]


def shared_rows(
    spark: SparkSession, work: Paths, groups: Sequence[GroupPlan], triggers: Sequence[TriggerPlan], events: DataFrame
) -> DataFrame:
    """The operator's input: trigger rows (with the event time the watermark drops by) and tile rows."""
    first = triggers[0]
    key, ts = first.entity_key, first.event_time
    watermarked = events.withWatermark(ts, f"{max(t.watermark_s for t in triggers)} seconds")
    flags = [t.condition_column(i) for t in triggers for i in range(len(t.conditions))]
    compact = condition_events(watermarked, list(triggers))
    trigger_rows = compact.select(
        F.col(key).cast("string").alias(key),
        F.col(ts),
        F.lit(-1).alias(GROUP),
        F.lit(None).cast("string").alias(ROW),
        F.to_json(
            F.array(F.col(TS_MICROS).cast("string"), F.col(EVENT_ID), *[F.col(f).cast("string") for f in flags])
        ).alias(TRIGGER_ROW),
    )
    out = trigger_rows  # first: the union's event-time column (and its watermark) is the trigger rows'
    for index, group in enumerate(groups):
        rows = tile_rows(spark, work, group, watermarked).select(
            F.col(group.entity_key).cast("string").alias(key),
            F.lit(None).cast("timestamp").alias(ts),  # never late: the tiles count every event
            F.lit(index).alias(GROUP),
            F.col(ROW),
            F.lit(None).cast("string").alias(TRIGGER_ROW),
        )
        out = out.unionByName(rows)
    return out


class SharedProcessor(StatefulProcessor):
    """Per entity: the triggers' states and the carried groups' tiles in one value state; emits the firings,
    each with the carried groups' feature values at its event (:data:`FEATURES`)."""

    def __init__(self, triggers: Sequence[TriggerPlan], groups: Sequence[GroupPlan], vectors: bool = False) -> None:
        self.vectors = vectors
        self.rules = {t.name: _rule(t) for t in triggers}
        self.conditions = [(t.name, i) for t in triggers for i in range(len(t.conditions))]
        self.horizon_us = max(t.state_horizon_s for t in triggers) * 1_000_000
        self.key_name = triggers[0].entity_key
        self.groups = [
            (g.name, TileFolder(g.aggregations, g.slide_s), [a.name for a in g.aggregations]) for g in groups
        ]
        self.index_of = [{f"v{i}": i for i in range(len(g.aggregations))} for g in groups]
        # a vector lists the features in the group's order, the folder computes them in its aggregations'
        self.order = [[[a.name for a in g.aggregations].index(n) for n in g.feature_names] for g in groups]

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.handle = handle
        self.state = handle.getValueState("shared", STATE)

    def _event(self, group: int, row: dict[str, Any]) -> tuple[int, str, dict[int, Any]]:
        index_of = self.index_of[group]  # to_json leaves out null fields: only the aggregations the row counts for
        return row["t"], row["i"], {index_of[k]: v for k, v in row.items() if k in index_of}

    def handleInputRows(self, key: Any, rows: Iterator[Row], timerValues: Any) -> Iterator[Row]:
        watermark_us = max(int(timerValues.getCurrentWatermarkInMs()), 0) * 1000
        stored = self.state.get()
        saved = orjson.loads(stored[0]) if stored is not None else {}
        per_trigger = {name: TriggerState.from_json(saved.get("t", {}).get(name, {})) for name in self.rules}
        kept = saved.get("g") or [{} for _ in self.groups]
        tiles = [TileState.from_json(g["s"]) if g.get("s") else TileState() for g in kept]
        recent: list[list[dict[str, Any]]] = [list(g.get("r", [])) for g in kept]
        floors: list[int | None] = [g.get("f") for g in kept]
        # the entity's one timer, kept in its state: no listing of the timers, and no call when it stays put
        timer = saved.get("w") if "w" in saved else (None if stored is None else UNKNOWN_TIMER)
        new_rows: list[list[dict[str, Any]]] = [[] for _ in self.groups]
        entries: dict[str, list[tuple[int, str, int]]] = {name: [] for name in self.rules}
        for row in rows:
            group = row[GROUP]
            if group < 0:
                ts_us, event_id, *met = orjson.loads(row[TRIGGER_ROW])
                for (name, condition), flag in zip(self.conditions, met, strict=True):
                    if flag == "true":
                        entries[name].append((int(ts_us), str(event_id), condition))
            else:
                new_rows[group].append(orjson.loads(row[ROW]))
        # fold first: a firing in this batch reads every event at or before it, this batch's included
        out = []
        for index, (_, folder, _) in enumerate(self.groups):
            if not new_rows[index]:
                continue
            oldest = floors[index] if floors[index] is not None else -(2**62)
            events = [self._event(index, r) for r in new_rows[index]]
            counted = 0
            if self.vectors:  # and every event the feature stream folds: within the newest event's windows
                newest = max(tiles[index].newest_us, max(e[0] for e in events))
                horizon = folder.tile_of(newest) + folder.slide_s - folder.horizon_s
                oldest = min(oldest, horizon)
                counted = sum(1 for e in events if folder.tile_of(e[0]) >= horizon)
            folder.fold(tiles[index], events, oldest=oldest)
            recent[index] += [r for r in new_rows[index] if folder.tile_of(r["t"]) >= oldest]
            if self.vectors and counted:
                out.append(self._vector(key, index, tiles[index]))
        folded_recent: list[list[tuple[int, str, dict[int, Any]]]] | None = None  # once per entity, if it fires
        for name, rule in self.rules.items():
            for firing in advance(rule, per_trigger[name], entries[name], watermark_us):
                if folded_recent is None:
                    folded_recent = [[self._event(i, r) for r in kept] for i, kept in enumerate(recent)]
                values = {
                    group: dict(
                        zip(names, folder.values_at(tiles[index], firing.time_us, folded_recent[index]), strict=True)
                    )
                    for index, (group, folder, names) in enumerate(self.groups)
                }
                out.append(
                    Row(
                        **{
                            self.key_name: str(key[0]),
                            "trigger": name,
                            FIRING_TS: from_micros(firing.time_us),  # aware: no local-time conversion
                            "event_id": firing.event_id,
                            FEATURES: orjson.dumps(values).decode(),
                            GROUP: None,
                            OUT: None,
                        }
                    )
                )
        self._keep(per_trigger, tiles, recent, watermark_us, timer)
        yield from out

    def _vector(self, key: Any, index: int, tiles: TileState) -> Row:
        """The group's features at the entity's newest event: the feature stream's row for it."""
        features = self.groups[index][1].values(tiles)
        values = orjson.dumps([tiles.newest_us, *[features[i] for i in self.order[index]]]).decode()
        return Row(
            **{
                self.key_name: str(key[0]),
                "trigger": None,
                FIRING_TS: None,
                "event_id": None,
                FEATURES: None,
                GROUP: index,
                OUT: values,
            }
        )

    def _keep(
        self,
        per_trigger: dict[str, TriggerState],
        tiles: list[TileState],
        recent: list[list[dict[str, Any]]],
        watermark_us: int,
        timer: int | object | None,
    ) -> None:
        """Evict what no later firing can read, store the rest (or clear it), and move the one timer (``timer``:
        where it is now, None for none, or :data:`UNKNOWN_TIMER`)."""
        groups = []
        tiles_until_us = -1  # the watermark after which no later firing's window reaches a kept tile
        for index, (_, folder, _) in enumerate(self.groups):
            floor = folder.tile_of(watermark_us) + folder.slide_s - folder.horizon_s
            if self.vectors and tiles[index].newest_us >= 0:  # the newest event's windows stay whole
                floor = min(floor, folder.oldest_kept(tiles[index]))
            folder.fold(tiles[index], [], oldest=floor)  # drops the tiles before the floor
            open_from = folder.tile_of(watermark_us)  # tiles ending after the watermark keep their events
            rows = [r for r in recent[index] if folder.tile_of(r["t"]) >= open_from]
            groups.append({"s": tiles[index].to_json(), "r": rows, "f": floor})
            if tiles[index].tiles:
                newest_tile = max(tiles[index].tiles)
                tiles_until_us = max(tiles_until_us, (newest_tile + folder.horizon_s) * 1_000_000)
        triggers_empty = all(is_empty(s) for s in per_trigger.values())
        wanted = None
        if triggers_empty and tiles_until_us < 0:
            self.state.clear()
        elif self.vectors and triggers_empty and tiles_until_us <= watermark_us:
            self.state.update((orjson.dumps({"t": {}, "g": groups, "w": None}),))  # only the vectors read it
        else:
            newest = max((e[0] for s in per_trigger.values() for e in s.events), default=0)
            newest = max([newest] + [f for s in per_trigger.values() for f in s.fired])
            wanted = max(newest + self.horizon_us, tiles_until_us, watermark_us + 1000) // 1000 + 1
            state = {"t": {name: s.to_json() for name, s in per_trigger.items()}, "g": groups, "w": wanted}
            self.state.update((orjson.dumps(state),))
        self._move_timer(timer, wanted)

    def _move_timer(self, timer: int | object | None, wanted: int | None) -> None:
        """Leave the entity with one timer at ``wanted`` (ms; None: none), from ``timer``: each timer call is
        a round trip to the JVM's state server, as the state's are."""
        if timer is UNKNOWN_TIMER:  # a state written before the timer was kept in it
            keep_one_timer(self.handle, wanted)
            return
        if timer == wanted:
            return
        if timer is not None:
            self.handle.deleteTimer(timer)
        if wanted is not None:
            self.handle.registerTimer(wanted)

    def handleExpiredTimer(self, key: Any, timerValues: Any, expiredTimerInfo: Any) -> Iterator[Row]:
        # the watermark passed everything the triggers and the tiles could still matter for, firings-wise
        stored = self.state.get() if self.vectors else None
        groups = [{**g, "r": []} for g in orjson.loads(stored[0]).get("g", [])] if stored is not None else []
        if any(g.get("s", {}).get("t") for g in groups):  # the vectors still read the tiles: keep them only
            # Spark deletes the expired timer after this call: the entity has none left
            self.state.update((orjson.dumps({"t": {}, "g": groups, "w": None}),))
        else:
            self.state.clear()
        yield from ()

    def close(self) -> None:
        pass


def firings_with_features(
    spark: SparkSession,
    work: Paths,
    groups: Sequence[GroupPlan],
    events: DataFrame,
    triggers: Sequence[TriggerPlan],
    vectors: bool = False,
) -> DataFrame:
    """Streaming DataFrame of firings (entity, trigger, firing_ts, event_id, :data:`FEATURES`) of ``triggers``
    over ``events``, each with the values of ``groups`` at the firing event; with ``vectors``, also a row per
    entity and group whose tiles a batch changed (trigger null, :data:`GROUP`, the feature stream's ``OUT``)."""
    first = triggers[0]
    return (
        shared_rows(spark, work, groups, triggers, events)
        .groupBy(first.entity_key)
        .transformWithState(
            SharedProcessor(triggers, groups, vectors),
            outputStructType=SHARED_FIRING_SCHEMA.format(key=first.entity_key),
            outputMode="Append",
            timeMode="EventTime",
        )
    )
