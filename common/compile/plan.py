"""Phase 3: compile a validated spec into a plan of pure DataFrame functions.

The plan is the only thing engines (batch backfill, streaming job, REST) see.
Each :class:`GroupPlan` method is a pure ``DataFrame -> DataFrame`` function;
batch and streaming call the very same methods, only readers and writers differ.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from common.compile.aggregates import AggPlan
from common.compile.lineage import group_problems, resolve_group, source_pii_errors
from common.compile.models import ModelPlan, compile_model, model_problems
from common.compile.triggers import TriggerPlan, compile_triggers
from common.errors import CompileError, PrivacyError, SpecErrors
from common.spec.base import duration_seconds
from common.spec.features import FeatureGroup
from common.spec.transforms import Transform
from common.spec.usecase import UseCase

# Column names the engines add; user columns may not start with "_".
TILE = "_tile"  # tile start, epoch seconds (long)
TS_MICROS = "_ts_us"  # event time, epoch microseconds (long): total order for ranges
EVENT_ID = "_event_id"  # stable tie-breaker for "last"
FEATURE_TS = "feature_ts"


@dataclass(frozen=True)
class JoinPlan:
    source: str
    columns: tuple[str, ...]
    event_time: str | None  # the table's versioning column: newest row wins


@dataclass(frozen=True)
class GroupPlan:
    """Everything needed to compute one feature group, in batch or streaming."""

    usecase: str
    usecase_version: int
    name: str
    entity: str
    entity_key: str
    source: str
    source_kind: str  # "events" | "table"
    event_time: str | None
    id_column: str | None
    slide_s: int
    ttl_s: int | None
    online: bool
    joins: tuple[JoinPlan, ...]
    transforms: tuple[Transform, ...]
    aggregations: tuple[AggPlan, ...]  # events sources
    expressions: tuple[tuple[str, str], ...]  # table sources: (feature name, sql)
    feature_names: tuple[str, ...] = field(default=())

    @property
    def schema_version(self) -> int:
        """Fingerprint of the feature list and their definitions (uint32)."""
        payload = json.dumps(
            [self.feature_names, [a.__dict__ for a in self.aggregations], self.expressions, self.slide_s],
            sort_keys=True,
            default=str,
        )
        return int(hashlib.sha256(payload.encode()).hexdigest()[:8], 16)

    @property
    def max_window_s(self) -> int:
        return max((a.window_s for a in self.aggregations), default=0)


@dataclass(frozen=True)
class Plan:
    usecase: str
    version: int
    spec: UseCase
    groups: dict[str, GroupPlan]
    models: dict[str, ModelPlan] = field(default_factory=dict)
    triggers: dict[str, TriggerPlan] = field(default_factory=dict)

    def group(self, name: str) -> GroupPlan:
        return self.groups[name]

    def model(self, name: str) -> ModelPlan:
        """The plan of model ``name``; a clear error for an unknown one."""
        if name not in self.models:
            raise CompileError(
                f"use case {self.usecase!r} has no model {name!r}",
                value=name,
                fix=f"use one of {sorted(self.models)}" if self.models else "declare it under models: in the metadata",
            )
        return self.models[name]


def _group_plan(spec: UseCase, name: str, group: FeatureGroup) -> GroupPlan:
    resolved = resolve_group(spec, name)
    source = spec.sources[group.source]
    entity = spec.entities[group.entity]
    aggregations = tuple(
        AggPlan(f.name, f.agg, duration_seconds(f.window), f.expr, f.where)
        for f in group.features
        if f.agg is not None and f.window is not None
    )
    expressions = tuple((f.name, f.expr) for f in group.features if f.agg is None and f.expr is not None)
    return GroupPlan(
        usecase=spec.name,
        usecase_version=spec.version,
        name=name,
        entity=group.entity,
        entity_key=entity.key,
        source=group.source,
        source_kind=source.kind,
        event_time=source.event_time,
        id_column=source.id,
        slide_s=duration_seconds(group.slide),
        ttl_s=duration_seconds(group.ttl) if group.ttl else None,
        online=group.online,
        joins=tuple(JoinPlan(j.source, tuple(j.columns), spec.sources[j.source].event_time) for j in group.joins),
        transforms=resolved.transforms,
        aggregations=aggregations,
        expressions=expressions,
        feature_names=tuple(f.name for f in group.features),
    )


def plan_problems(spec: UseCase) -> list[CompileError]:
    """Every problem that would make the plan wrong (lineage, names, PII, models), not just the first:
    what `loom validate` reports before any job runs."""
    found: list[CompileError] = []
    for name in spec.feature_groups:
        found += group_problems(spec, name)[1]
    for name in spec.models:
        found += model_problems(spec, name)
    found += source_pii_errors(spec)
    # One error per unprotected PII column (its fix is on the column): the first found names the
    # feature it would reach; the bare "no policy" one only when no feature reads it.
    errors: list[CompileError] = []
    pii_paths: set[str | None] = set()
    for error in found:
        if isinstance(error, PrivacyError):
            if error.path in pii_paths:
                continue
            pii_paths.add(error.path)
        errors.append(error)
    return errors


def compile_usecase(spec: UseCase) -> Plan:
    """Compile ``spec``; raises CompileError/PrivacyError for a plan that would be wrong (SpecErrors
    listing every problem when there are several)."""
    problems = plan_problems(spec)
    if problems:
        raise problems[0] if len(problems) == 1 else SpecErrors(list(problems))
    groups = {name: _group_plan(spec, name, group) for name, group in spec.feature_groups.items()}
    ttls = {name: group.ttl_s for name, group in groups.items()}
    models = {name: compile_model(spec, name, ttls) for name in spec.models}
    return Plan(spec.name, spec.version, spec, groups, models, compile_triggers(spec))
