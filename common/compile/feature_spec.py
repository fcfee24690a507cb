"""The feature spec a logged model carries: which features, from which groups,
with which on-demand transforms, keyed by which entity.

It is plain data (JSON in the model's artifacts), so the pyfunc, the stream and
the REST service can read it without Spark or the use case's YAML.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GroupRef:
    """A feature group the model reads, with all of its features (to decode the online vector)."""

    name: str
    feature_names: tuple[str, ...]
    ttl_s: int | None
    selected: tuple[str, ...]


@dataclass(frozen=True)
class FeatureSpec:
    """What a model needs to turn entity keys (and request fields) into its input frame."""

    usecase: str
    usecase_version: int
    model: str
    entity: str
    entity_key: str
    groups: tuple[GroupRef, ...]
    on_demand: tuple[dict[str, Any], ...] = field(default=())

    @cached_property  # read on every REST request: computed once per spec (frozen, so it never goes stale)
    def lookup_features(self) -> tuple[str, ...]:
        """Columns looked up from the feature store, in model order."""
        return tuple(name for group in self.groups for name in group.selected)

    @cached_property
    def on_demand_outputs(self) -> tuple[str, ...]:
        return tuple(t["name"] for t in self.on_demand)

    @cached_property
    def inputs(self) -> tuple[str, ...]:
        """The estimator's input columns, in order: looked-up features, then on-demand outputs."""
        return self.lookup_features + self.on_demand_outputs

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        groups = tuple(
            GroupRef(g["name"], tuple(g["feature_names"]), g.get("ttl_s"), tuple(g["selected"])) for g in data["groups"]
        )
        return cls(
            usecase=data["usecase"],
            usecase_version=int(data["usecase_version"]),
            model=data["model"],
            entity=data["entity"],
            entity_key=data["entity_key"],
            groups=groups,
            on_demand=tuple(data.get("on_demand", ())),
        )

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        return cls.from_dict(json.loads(Path(path).read_text()))
