"""The root of a use case's metadata."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr

from common.spec.base import Name, Strict
from common.spec.features import FeatureGroup
from common.spec.models import Model
from common.spec.schedules import Schedule
from common.spec.sources import Source
from common.spec.triggers import Trigger


class Entity(Strict):
    """A business object that features describe, identified by one key column."""

    key: Name
    type: Literal["string", "long"] = "string"


class UseCase(Strict):
    """One use case: entities, sources, feature groups, the models trained on them and the triggers that score them."""

    name: Name
    version: int = Field(default=1, ge=1, description="bumped when features change incompatibly")
    description: str = ""
    entities: dict[Name, Entity] = Field(min_length=1)
    sources: dict[Name, Source] = Field(min_length=1)
    feature_groups: dict[Name, FeatureGroup] = Field(default_factory=dict)
    models: dict[Name, Model] = Field(default_factory=dict)
    triggers: dict[Name, Trigger] = Field(default_factory=dict)
    schedules: dict[Name, Schedule] = Field(default_factory=dict)

    # file each (section, item) was loaded from, so later phases can name it
    _origins: dict[tuple[str, ...], str] = PrivateAttr(default_factory=dict)

    def file_of(self, section: str, item: str | None = None) -> str | None:
        """The YAML file that defined ``section`` (and ``item`` in it), if known."""
        if item is not None and (section, item) in self._origins:
            return self._origins[(section, item)]
        return self._origins.get((section,))
