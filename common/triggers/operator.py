"""The stateful streaming operator of a source's triggers.

Events are reduced in Spark to (entity, time, event id, one boolean per
trigger condition), watermarked, grouped by entity, and fed to
``transformWithState`` (:class:`TriggerProcessor`, row API): per entity it
keeps a :class:`TriggerState` per trigger (JSON in Spark's state store, so
checkpoints restore it exactly) and emits one row per firing. An event-time
timer drops an entity's state once the watermark has passed everything that
could still matter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle
from pyspark.sql.types import StringType, StructField, StructType

from common.compile.event_time import from_micros
from common.compile.plan import EVENT_ID, TS_MICROS
from common.compile.triggers import TriggerPlan
from common.triggers.matcher import Rule, TriggerState, advance, is_empty

FIRING_TS = "firing_ts"
FIRING_SCHEMA = "{key} string, trigger string, firing_ts timestamp, event_id string"
STATE_SCHEMA = StructType([StructField("state", StringType())])  # {trigger: TriggerState JSON}
# The operator's state layout, in its checkpoint's name. A new layout needs a checkpoint of its own and, with
# it, a new txnAppId for the predictions: batch ids restart at 0 there, and Delta would skip them as written.
# "twsf": triggers and tiles in one state (common/triggers/shared_state.py), firings carry their features;
# "tws": triggers alone (this module), for a source none of whose events groups the firings can read.
STATE_LAYOUT = "twsf"
TRIGGERS_ONLY_LAYOUT = "tws"


def _rule(trigger: TriggerPlan) -> Rule:
    return Rule(trigger.kind, len(trigger.conditions), trigger.within_s * 1_000_000, trigger.cooldown_s * 1_000_000)


def condition_events(events: DataFrame, triggers: list[TriggerPlan]) -> DataFrame:
    """(entity, event time, event id, µs, one boolean per condition) for rows meeting any condition."""
    first = triggers[0]
    key, ts = first.entity_key, first.event_time
    event_id = (
        F.col(first.id_column).cast("string")
        if first.id_column
        else F.sha2(F.to_json(F.struct(*[F.col(c) for c in events.columns])), 256)
    )
    flags = {
        t.condition_column(i): F.coalesce(F.expr(sql).cast("boolean"), F.lit(False))
        for t in triggers
        for i, sql in enumerate(t.conditions)
    }
    any_flag = F.lit(False)
    for name in flags:
        any_flag = any_flag | F.col(name)
    return (
        events.where(F.col(key).isNotNull() & F.col(ts).isNotNull())
        .select(
            F.col(key),
            F.col(ts),
            event_id.alias(EVENT_ID),
            F.unix_micros(F.col(ts)).alias(TS_MICROS),
            *[expr.alias(name) for name, expr in flags.items()],
        )
        .where(any_flag)
    )


def keep_one_timer(handle: StatefulProcessorHandle, wanted: int | None) -> None:
    """Leave the key with exactly one timer, at ``wanted`` (ms), or none when ``wanted`` is None."""
    timers = list(handle.listTimers())
    for expiry_ms in timers:
        if expiry_ms != wanted:
            handle.deleteTimer(expiry_ms)
    if wanted is not None and wanted not in timers:
        handle.registerTimer(wanted)


class TriggerProcessor(StatefulProcessor):
    """Per entity: the triggers' :class:`TriggerState` in a value state, one event-time timer, the firings.

    ``transformWithState``'s row API: no pandas frame per entity (``applyInPandasWithState``'s cost).
    """

    def __init__(self, triggers: list[TriggerPlan]) -> None:
        self.rules = {t.name: _rule(t) for t in triggers}
        self.columns = {t.name: [t.condition_column(i) for i in range(len(t.conditions))] for t in triggers}
        self.horizon_us = max(t.state_horizon_s for t in triggers) * 1_000_000
        self.key_name = triggers[0].entity_key

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.handle = handle
        self.state = handle.getValueState("triggers", STATE_SCHEMA)

    def handleInputRows(self, key: Any, rows: Iterator[Row], timerValues: Any) -> Iterator[Row]:
        watermark_us = max(int(timerValues.getCurrentWatermarkInMs()), 0) * 1000
        stored = self.state.get()
        saved = json.loads(stored[0]) if stored is not None else {}
        per_trigger = {name: TriggerState.from_json(saved.get(name, {})) for name in self.rules}
        events = list(rows)
        out = []
        for name, rule in self.rules.items():
            new_events = [
                (int(row[TS_MICROS]), str(row[EVENT_ID]), condition)
                for condition, column in enumerate(self.columns[name])
                for row in events
                if row[column]
            ]
            for firing in advance(rule, per_trigger[name], new_events, watermark_us):
                firing_ts = from_micros(firing.time_us)  # aware: no local-time conversion
                out.append(
                    Row(
                        **{
                            self.key_name: str(key[0]),
                            "trigger": name,
                            FIRING_TS: firing_ts,
                            "event_id": firing.event_id,
                        }
                    )
                )
        self._keep(per_trigger, watermark_us)
        yield from out

    def _keep(self, per_trigger: dict[str, TriggerState], watermark_us: int) -> None:
        """Store the states, or drop them when empty; one timer, at the time they stop mattering."""
        wanted = None
        if all(is_empty(s) for s in per_trigger.values()):
            self.state.clear()
        else:
            self.state.update((json.dumps({name: s.to_json() for name, s in per_trigger.items()}),))
            newest = max((e[0] for s in per_trigger.values() for e in s.events), default=0)
            newest = max([newest] + [f for s in per_trigger.values() for f in s.fired])
            wanted = max(newest + self.horizon_us, watermark_us + 1000) // 1000 + 1
        keep_one_timer(self.handle, wanted)

    def handleExpiredTimer(self, key: Any, timerValues: Any, expiredTimerInfo: Any) -> Iterator[Row]:
        self.state.clear()  # the watermark passed everything the state could still match
        yield from ()

    def close(self) -> None:
        pass


def firings(events: DataFrame, triggers: list[TriggerPlan]) -> DataFrame:
    """Streaming DataFrame of firings (entity, trigger, firing_ts, event_id) of ``triggers`` over ``events``."""
    first = triggers[0]
    watermark = max(t.watermark_s for t in triggers)
    compact = condition_events(events, triggers).withWatermark(first.event_time, f"{watermark} seconds")
    return compact.groupBy(first.entity_key).transformWithState(
        TriggerProcessor(triggers),
        outputStructType=FIRING_SCHEMA.format(key=first.entity_key),
        outputMode="Append",
        timeMode="EventTime",
    )
