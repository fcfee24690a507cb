"""Compile a model of the spec into a :class:`ModelPlan`: resolved feature
references, label, estimator, split, metrics and promotion rule."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from common.compile.feature_spec import FeatureSpec, GroupRef
from common.errors import CompileError
from common.spec.models import Model
from common.spec.usecase import UseCase


@dataclass(frozen=True)
class ModelPlan:
    """Everything the training, scoring and serving jobs need to know about one model."""

    usecase: str
    usecase_version: int
    name: str
    spec: Model
    entity_key: str
    feature_spec: FeatureSpec
    label_source: str
    label_expr: str
    label_time: str
    metadata_hash: str

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.feature_spec.groups)

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.feature_spec.inputs


def metadata_hash(spec: UseCase) -> str:
    """sha256 of the use case's canonical JSON: the same metadata gives the same hash."""
    payload = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def resolve_feature_refs(
    spec: UseCase, refs: list[str], where: str = "features", file: str | None = None
) -> dict[str, list[str]]:
    """``["activity.*", "profile.tenure_days"]`` -> {group: [feature, ...]}, in reference order.

    Output columns are the feature names, so a name selected from two groups is an error.
    """
    selected: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for ref in refs:
        group_name, _, feature = ref.partition(".")
        group = spec.feature_groups.get(group_name)
        if group is None:
            raise CompileError(
                "unknown feature group",
                file=file,
                path=where,
                value=ref,
                fix=f"use one of {sorted(spec.feature_groups)}",
            )
        names = [f.name for f in group.features]
        if feature != "*" and feature not in names:
            raise CompileError(
                f"group {group_name!r} has no feature {feature!r}",
                file=file,
                path=where,
                value=ref,
                fix=f"use one of {names}",
            )
        for column in names if feature == "*" else [feature]:
            if column in owner and owner[column] != group_name:
                raise CompileError(
                    f"feature {column!r} is in both {owner[column]!r} and {group_name!r}",
                    file=file,
                    path=where,
                    value=ref,
                    fix="select it from one group only, or rename the feature in one group",
                )
            if column not in selected.setdefault(group_name, []):
                selected[group_name].append(column)
                owner[column] = group_name
    return selected


def model_problems(spec: UseCase, name: str) -> list[CompileError]:
    """What would make model ``name`` fail at training or scoring, checked on the spec: every problem.

    * its feature references select one name from two groups;
    * an on-demand output takes the name of a feature of the model's entity, of the entity key, or of an
      earlier on-demand output (the model's input columns would clash);
    * its label expression reads a column that its label source does not have.
    """
    from common.spec.sql import referenced_columns

    model = spec.models[name]
    file = spec.file_of("models", name)
    errors: list[CompileError] = []
    try:
        resolve_feature_refs(spec, model.features, where=f"models.{name}.features", file=file)
    except CompileError as err:
        errors.append(err)
    features: dict[str, str] = {}
    for group_name, group in spec.feature_groups.items():
        if group.entity == model.entity:
            for feature in group.features:
                features.setdefault(feature.name, group_name)
    entity_key = spec.entities[model.entity].key
    earlier: set[str] = set()
    for index, transform in enumerate(model.on_demand):
        clash = None
        if transform.name in features:
            clash = f"the feature {features[transform.name]}.{transform.name}"
        elif transform.name == entity_key:
            clash = f"the entity key {entity_key!r}"
        elif transform.name in earlier:
            clash = "an earlier on-demand output"
        if clash:
            errors.append(
                CompileError(
                    f"model {name!r}: on-demand output {transform.name!r} has the name of {clash}",
                    file=file,
                    path=f"models.{name}.on_demand[{index}].name",
                    value=transform.name,
                    fix=f"give the on-demand transform another name, e.g. {transform.name}_{transform.fn}",
                )
            )
        earlier.add(transform.name)
    source = spec.sources.get(model.label.source)
    if source is not None:
        unknown = [c for c in referenced_columns(model.label.expr) if c not in source.columns]
        if unknown:
            errors.append(
                CompileError(
                    f"model {name!r}: the label expression reads {unknown}, which source "
                    f"{model.label.source!r} does not have",
                    file=file,
                    path=f"models.{name}.label.expr",
                    value=model.label.expr,
                    fix=f"use columns of {sorted(source.columns)}",
                )
            )
    return errors


def compile_model(spec: UseCase, name: str, group_ttls: dict[str, int | None]) -> ModelPlan:
    """Resolve ``spec.models[name]``; references were checked when the spec was loaded."""
    model = spec.models[name]
    file = spec.file_of("models", name)
    selected = resolve_feature_refs(spec, model.features, where=f"models.{name}.features", file=file)
    owner = {column: group for group, columns in selected.items() for column in columns}
    on_demand: list[dict[str, Any]] = []
    for transform in model.on_demand:
        if transform.name in owner:
            raise CompileError(
                f"model {name!r}: on-demand output {transform.name!r} is also a feature",
                file=file,
                path=f"models.{name}.on_demand",
                fix="give the on-demand transform another name",
            )
        on_demand.append(transform.model_dump(mode="json"))
    groups = tuple(
        GroupRef(
            name=group_name,
            feature_names=tuple(f.name for f in spec.feature_groups[group_name].features),
            ttl_s=group_ttls.get(group_name),
            selected=tuple(columns),
        )
        for group_name, columns in selected.items()
    )
    entity_key = spec.entities[model.entity].key
    feature_spec = FeatureSpec(
        usecase=spec.name,
        usecase_version=spec.version,
        model=name,
        entity=model.entity,
        entity_key=entity_key,
        groups=groups,
        on_demand=tuple(on_demand),
    )
    return ModelPlan(
        usecase=spec.name,
        usecase_version=spec.version,
        name=name,
        spec=model,
        entity_key=entity_key,
        feature_spec=feature_spec,
        label_source=model.label.source,
        label_expr=model.label.expr,
        label_time=model.label.time,
        metadata_hash=metadata_hash(spec),
    )
