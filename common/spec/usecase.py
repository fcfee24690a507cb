"""The root of a use case's metadata."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.spec.base import Name, Strict
from common.spec.features import FeatureGroup
from common.spec.sources import Source


class Entity(Strict):
    """A business object that features describe, identified by one key column."""

    key: Name
    type: Literal["string", "long"] = "string"


class UseCase(Strict):
    """One use case: entities, sources and feature groups (models come later)."""

    name: Name
    version: int = Field(default=1, ge=1, description="bumped when features change incompatibly")
    description: str = ""
    entities: dict[Name, Entity] = Field(min_length=1)
    sources: dict[Name, Source] = Field(min_length=1)
    feature_groups: dict[Name, FeatureGroup] = Field(default_factory=dict)
