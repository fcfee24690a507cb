"""Cross-references a single model cannot check: names that must exist elsewhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.spec.models import Model
from common.spec.triggers import Trigger
from common.spec.usecase import UseCase


@dataclass(frozen=True)
class Problem:
    path: tuple[Any, ...]
    message: str
    value: Any = None
    fix: str | None = None


def check_references(spec: UseCase) -> list[Problem]:
    """Every entity, source and joined column a use case names must exist."""
    problems: list[Problem] = []
    entities = sorted(spec.entities)
    for name, source in spec.sources.items():
        entity = spec.entities.get(source.entity)
        if entity is None:
            problems.append(
                Problem(("sources", name, "entity"), "unknown entity", source.entity, f"use one of {entities}")
            )
        elif entity.key not in source.columns:
            problems.append(
                Problem(
                    ("sources", name, "columns"),
                    f"the key column {entity.key!r} of entity {source.entity!r} is missing",
                    None,
                    f"add {entity.key}: {{type: {entity.type}, required: true}}",
                )
            )
    sources = sorted(spec.sources)
    for name, group in spec.feature_groups.items():
        base = ("feature_groups", name)
        if group.entity not in spec.entities:
            problems.append(Problem(base + ("entity",), "unknown entity", group.entity, f"use one of {entities}"))
        source = spec.sources.get(group.source)
        if source is None:
            problems.append(Problem(base + ("source",), "unknown source", group.source, f"use one of {sources}"))
            continue
        if source.entity != group.entity:
            problems.append(
                Problem(
                    base + ("source",),
                    f"source {group.source!r} describes entity {source.entity!r}, not {group.entity!r}",
                    group.source,
                    "use a source of the same entity",
                )
            )
        for index, feature in enumerate(group.features):
            if feature.window is not None and source.event_time is None:
                problems.append(
                    Problem(
                        base + ("features", index, "window"),
                        f"feature {feature.name!r} has a window but source {group.source!r} has no event_time",
                        feature.window,
                        f"set event_time on source {group.source!r}, or drop agg and window",
                    )
                )
        if source.kind == "events":
            for index, feature in enumerate(group.features):
                if feature.agg is None:
                    problems.append(
                        Problem(
                            base + ("features", index),
                            f"feature {feature.name!r} over events source {group.source!r} needs agg and window",
                            None,
                            "add agg: (count, sum, avg, ...) and window: (e.g. 7 days)",
                        )
                    )
        for index, join in enumerate(group.joins):
            other = spec.sources.get(join.source)
            where = base + ("joins", index, "source")
            if other is None:
                problems.append(Problem(where, "unknown source", join.source, f"use one of {sources}"))
                continue
            if other.kind != "table":
                problems.append(
                    Problem(where, f"only table sources can be joined; {join.source!r} has kind events", join.source)
                )
            if other.entity != group.entity:
                problems.append(
                    Problem(where, f"source {join.source!r} describes entity {other.entity!r}, not {group.entity!r}")
                )
            for col_index, column in enumerate(join.columns):
                if column not in other.columns:
                    problems.append(
                        Problem(
                            base + ("joins", index, "columns", col_index),
                            f"source {join.source!r} has no column {column!r}",
                            column,
                            f"use one of {sorted(other.columns)}",
                        )
                    )
    for name, model in spec.models.items():
        problems += _model_problems(spec, name, model)
    for name, trigger in spec.triggers.items():
        problems += _trigger_problems(spec, name, trigger)
    return problems


def _trigger_problems(spec: UseCase, name: str, trigger: Trigger) -> list[Problem]:
    from common.spec.sql import referenced_columns

    base = ("triggers", name)
    problems: list[Problem] = []
    if trigger.entity not in spec.entities:
        problems.append(
            Problem(base + ("entity",), "unknown entity", trigger.entity, f"use one of {sorted(spec.entities)}")
        )
    source = spec.sources.get(trigger.source)
    if source is None:
        problems.append(
            Problem(base + ("source",), "unknown source", trigger.source, f"use one of {sorted(spec.sources)}")
        )
    elif source.kind != "events" or source.event_time is None:
        problems.append(
            Problem(
                base + ("source",), f"source {trigger.source!r} is not an events source with event_time", trigger.source
            )
        )
    elif source.entity != trigger.entity:
        problems.append(
            Problem(base + ("source",), f"source {trigger.source!r} describes entity {source.entity!r}", trigger.source)
        )
    else:
        for index, sql in enumerate(trigger.conditions):
            for column in referenced_columns(sql):
                if column not in source.columns:
                    problems.append(
                        Problem(
                            base + (trigger.kind, index),
                            f"condition reads {column!r}, which source {trigger.source!r} does not have",
                            sql,
                            f"use columns of {sorted(source.columns)}",
                        )
                    )
    model = spec.models.get(trigger.model)
    if model is None:
        problems.append(Problem(base + ("model",), "unknown model", trigger.model, f"use one of {sorted(spec.models)}"))
    elif model.entity != trigger.entity:
        problems.append(
            Problem(base + ("model",), f"model {trigger.model!r} predicts for entity {model.entity!r}", trigger.model)
        )
    return problems


def _model_problems(spec: UseCase, name: str, model: Model) -> list[Problem]:
    base = ("models", name)
    problems: list[Problem] = []
    entity = spec.entities.get(model.entity)
    if entity is None:
        return [Problem(base + ("entity",), "unknown entity", model.entity, f"use one of {sorted(spec.entities)}")]
    source = spec.sources.get(model.label.source)
    if source is None:
        problems.append(
            Problem(
                base + ("label", "source"), "unknown source", model.label.source, f"use one of {sorted(spec.sources)}"
            )
        )
    else:
        if model.label.time not in source.columns:
            problems.append(
                Problem(
                    base + ("label", "time"),
                    f"source {model.label.source!r} has no column {model.label.time!r}",
                    model.label.time,
                    f"use one of {sorted(source.columns)}",
                )
            )
        if model.split.column is not None and model.split.column not in source.columns:
            problems.append(
                Problem(
                    base + ("split", "column"),
                    f"label source {model.label.source!r} has no column {model.split.column!r}",
                    model.split.column,
                    f"use one of {sorted(source.columns)}",
                )
            )
        if entity.key not in source.columns:
            problems.append(
                Problem(
                    base + ("label", "source"),
                    f"label source {model.label.source!r} lacks the key {entity.key!r} of entity {model.entity!r}",
                    model.label.source,
                    "use a source with one row per entity and label time",
                )
            )
    available: list[str] = []
    for index, ref in enumerate(model.features):
        group_name, feature = ref.split(".", 1)
        group = spec.feature_groups.get(group_name)
        where = base + ("features", index)
        if group is None:
            problems.append(Problem(where, "unknown feature group", ref, f"use one of {sorted(spec.feature_groups)}"))
            continue
        if group.entity != model.entity:
            problems.append(
                Problem(where, f"group {group_name!r} describes entity {group.entity!r}, not {model.entity!r}", ref)
            )
        names = [f.name for f in group.features]
        if feature != "*" and feature not in names:
            problems.append(
                Problem(where, f"group {group_name!r} has no feature {feature!r}", ref, f"use one of {names}")
            )
            continue
        available += names if feature == "*" else [feature]
    for index, transform in enumerate(model.on_demand):
        for column in transform.inputs():
            if column not in available:
                problems.append(
                    Problem(
                        base + ("on_demand", index),
                        f"on-demand transform {transform.name!r} reads {column!r}, which is not a model feature",
                        column,
                        "list the feature under features:, or read an earlier on-demand output",
                    )
                )
        available.append(transform.name)
    return problems
