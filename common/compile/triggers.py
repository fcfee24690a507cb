"""Compile triggers into :class:`TriggerPlan` s: what the stateful streaming operator needs."""

from __future__ import annotations

from dataclasses import dataclass

from common.spec.base import duration_seconds
from common.spec.usecase import UseCase


@dataclass(frozen=True)
class TriggerPlan:
    """One trigger, resolved: conditions as SQL, durations in seconds, the source's columns."""

    usecase: str
    name: str
    kind: str  # all_of | any_of | sequence
    conditions: tuple[str, ...]
    entity_key: str
    source: str
    event_time: str
    id_column: str | None
    within_s: int  # 0 for any_of / a single condition
    cooldown_s: int  # 0 = none
    watermark_s: int
    model: str
    alias: str
    threshold: float

    def condition_column(self, index: int) -> str:
        """Name of the boolean column holding condition ``index`` of this trigger."""
        return f"_tr_{self.name}_{index}"

    @property
    def state_horizon_s(self) -> int:
        """How long an event or a firing can still matter after the watermark passes it."""
        return max(self.within_s, self.cooldown_s)


def compile_triggers(spec: UseCase) -> dict[str, TriggerPlan]:
    """Triggers by name; references were checked when the spec was loaded."""
    plans = {}
    for name, trigger in spec.triggers.items():
        source = spec.sources[trigger.source]
        plans[name] = TriggerPlan(
            usecase=spec.name,
            name=name,
            kind=trigger.kind,
            conditions=tuple(trigger.conditions),
            entity_key=spec.entities[trigger.entity].key,
            source=trigger.source,
            event_time=source.event_time or "",
            id_column=source.id,
            within_s=duration_seconds(trigger.within) if trigger.within else 0,
            cooldown_s=duration_seconds(trigger.cooldown) if trigger.cooldown else 0,
            watermark_s=duration_seconds(source.watermark) if source.watermark else 0,
            model=trigger.model,
            alias=trigger.alias,
            threshold=trigger.threshold,
        )
    return plans
