"""Triggers: a combination of events for one entity that makes Loom score a model at once.

Exactly one of ``all_of``, ``any_of`` or ``sequence`` lists the event
conditions (Spark SQL predicates over the source's rows). ``within`` bounds
the time between the first and the last event of a combination; ``cooldown``
lets a trigger fire at most once per entity per period. Semantics:
docs/triggers.md.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from common.spec.base import Duration, Name, Strict
from common.spec.sql import check_sql


class Trigger(Strict):
    description: str = ""
    entity: Name
    source: Name = Field(description="events source whose rows the conditions test")
    all_of: list[str] | None = Field(default=None, description="every condition, in any order, within the window")
    any_of: list[str] | None = Field(default=None, description="any one condition")
    sequence: list[str] | None = Field(default=None, description="the conditions in this order, within the window")
    within: Duration | None = Field(default=None, description="from the first to the last event of the combination")
    cooldown: Duration | None = Field(default=None, description="fire at most once per entity per period")
    model: Name = Field(description="model to score when the trigger fires (its @champion)")
    alias: Name = Field(default="champion", description="registry alias of the model version to score")
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0, description="scores at or above this become actions")

    @field_validator("all_of", "any_of", "sequence")
    @classmethod
    def _predicates(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("list at least one condition")
            for sql in value:
                check_sql(sql)
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        kinds = [k for k in ("all_of", "any_of", "sequence") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a trigger needs exactly one of all_of, any_of or sequence (it has {kinds or 'none'})")
        conditions = getattr(self, kinds[0])
        if kinds[0] != "any_of" and len(conditions) > 1 and self.within is None:
            raise ValueError(f"{kinds[0]} with several conditions needs within (e.g. within: 30 minutes)")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("all_of", "any_of", "sequence") if getattr(self, k) is not None)

    @property
    def conditions(self) -> list[str]:
        return list(getattr(self, self.kind))
