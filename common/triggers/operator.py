"""The stateful streaming operator of a source's triggers.

Events are reduced in Spark to (entity, time, event id, one boolean per
trigger condition), watermarked, grouped by entity, and fed to
``applyInPandasWithState``: per entity it keeps a :class:`TriggerState` per
trigger (JSON in Spark's state store, so checkpoints restore it exactly) and
emits one row per firing. An event-time timeout drops an entity's state once
the watermark has passed everything that could still matter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.streaming.state import GroupState, GroupStateTimeout

from common.compile.triggers import TriggerPlan
from common.triggers.matcher import Rule, TriggerState, advance, is_empty

EVENT_ID = "_event_id"
TS_US = "_ts_us"
FIRING_TS = "firing_ts"
FIRING_SCHEMA = "{key} string, trigger string, firing_ts timestamp, event_id string"
STATE_SCHEMA = "state string"


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
            F.unix_micros(F.col(ts)).alias(TS_US),
            *[expr.alias(name) for name, expr in flags.items()],
        )
        .where(any_flag)
    )


def make_state_function(triggers: list[TriggerPlan]):
    """The ``applyInPandasWithState`` function: events of one entity -> its firings."""
    rules = {t.name: _rule(t) for t in triggers}
    columns = {t.name: [t.condition_column(i) for i in range(len(t.conditions))] for t in triggers}
    horizon_us = max(t.state_horizon_s for t in triggers) * 1_000_000
    key_name = triggers[0].entity_key

    def run(key: tuple[Any, ...], batches: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        if state.hasTimedOut:
            state.remove()
            return
        stored = json.loads(state.get[0]) if state.exists else {}
        per_trigger = {name: TriggerState.from_json(stored.get(name, {})) for name in rules}
        frame = pd.concat(list(batches), ignore_index=True)
        watermark_us = max(int(state.getCurrentWatermarkMs()), 0) * 1000
        out: list[dict[str, Any]] = []
        for name, rule in rules.items():
            new_events = [
                (int(ts), str(event_id), condition)
                for condition, column in enumerate(columns[name])
                for ts, event_id in frame.loc[frame[column], [TS_US, EVENT_ID]].itertuples(index=False)
            ]
            for firing in advance(rule, per_trigger[name], new_events, watermark_us):
                out.append(
                    {
                        key_name: key[0],
                        "trigger": name,
                        FIRING_TS: pd.Timestamp(firing.time_us, unit="us"),
                        "event_id": firing.event_id,
                    }
                )
        if all(is_empty(s) for s in per_trigger.values()):
            state.remove()
        else:
            state.update((json.dumps({name: s.to_json() for name, s in per_trigger.items()}),))
            newest = max((e[0] for s in per_trigger.values() for e in s.events), default=0)
            newest = max([newest] + [f for s in per_trigger.values() for f in s.fired])
            state.setTimeoutTimestamp(max(newest + horizon_us, watermark_us + 1000) // 1000 + 1)
        if out:
            yield pd.DataFrame(out, columns=[key_name, "trigger", FIRING_TS, "event_id"])

    return run


def firings(events: DataFrame, triggers: list[TriggerPlan]) -> DataFrame:
    """Streaming DataFrame of firings (entity, trigger, firing_ts, event_id) of ``triggers`` over ``events``."""
    first = triggers[0]
    watermark = max(t.watermark_s for t in triggers)
    compact = condition_events(events, triggers).withWatermark(first.event_time, f"{watermark} seconds")
    return compact.groupBy(first.entity_key).applyInPandasWithState(
        make_state_function(triggers),
        outputStructType=FIRING_SCHEMA.format(key=first.entity_key),
        stateStructType=STATE_SCHEMA,
        outputMode="append",
        timeoutConf=GroupStateTimeout.EventTimeTimeout,
    )
