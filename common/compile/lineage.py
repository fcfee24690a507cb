"""Column lineage of a feature group: ordering, missing references, cycles, PII.

Pure Python over the spec: no Spark. The compiler calls :func:`resolve_group`
and refuses any plan that reads a column that does not exist, loops, or would
carry a PII column without a policy into a feature, the offline store or Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import CompileError, PrivacyError
from common.spec.features import FeatureGroup
from common.spec.transforms import Transform
from common.spec.usecase import UseCase


@dataclass(frozen=True)
class Origin:
    """Where a base column of a feature group comes from."""

    source: str
    column: str


@dataclass(frozen=True)
class ResolvedGroup:
    transforms: tuple[Transform, ...]  # in dependency order
    base_columns: dict[str, Origin]  # columns available before transforms


def _available_base(spec: UseCase, group_name: str, group: FeatureGroup) -> dict[str, Origin]:
    """Columns the group can read before its transforms: its source plus joined columns."""
    base: dict[str, Origin] = {c: Origin(group.source, c) for c in spec.sources[group.source].columns}
    for join in group.joins:
        for column in join.columns:
            base.setdefault(column, Origin(join.source, column))
    return base


def source_pii_errors(spec: UseCase) -> list[PrivacyError]:
    """PII columns without a policy: they would reach bronze unprotected."""
    errors = []
    for name, source in spec.sources.items():
        file = spec.file_of("sources", name)
        for column_name, column in source.columns.items():
            if column.pii is True:
                errors.append(
                    PrivacyError(
                        f"column {column_name!r} is marked PII but has no policy; it would reach "
                        f"the bronze table {spec.name}/bronze/{name} and every feature that reads it",
                        file=file,
                        path=f"sources.{name}.columns.{column_name}.pii",
                        value=True,
                        fix="set pii to a policy: {method: drop}, {method: pseudonymize, key: ...}, "
                        "{method: encrypt, mode: deterministic|randomized, key: ...} or "
                        "{method: generalize, rule: prefix|year|bucket, ...}",
                    )
                )
    return errors


def _order_transforms(
    group_name: str,
    group: FeatureGroup,
    base: dict[str, Origin],
    file: str | None,
    errors: list[CompileError] | None = None,
):
    """Topological order of the transforms; errors for clashing outputs, unknown inputs and cycles.

    With ``errors``, every problem is appended there (and the order is what could be made of the rest);
    without, the first one is raised.
    """
    found: list[CompileError] = [] if errors is None else errors
    first = len(found)
    producer: dict[str, int] = {}
    for index, transform in enumerate(group.transforms):
        for output in transform.outputs():
            where = f"feature_groups.{group_name}.transforms[{index}]"
            if output in producer:
                found.append(
                    CompileError(
                        f"column {output!r} is produced by two transforms "
                        f"({group.transforms[producer[output]].name!r} and {transform.name!r})",
                        file=file,
                        path=f"{where}.name",
                        value=output,
                        fix="give each transform a unique name (one_hot: name its columns apart under names:)",
                    )
                )
                continue
            if output in base:
                origin = base[output]
                found.append(
                    CompileError(
                        f"transform {transform.name!r} outputs {output!r}, which is already a column of "
                        f"{'source' if origin.source == group.source else 'joined source'} {origin.source!r}",
                        file=file,
                        path=f"{where}.name",
                        value=output,
                        fix="give the transform another name (a feature may keep the column's name)",
                    )
                )
            producer[output] = index
    needs: dict[int, set[int]] = {}
    for index, transform in enumerate(group.transforms):
        deps: set[int] = set()
        for column in transform.inputs():
            if column in producer and producer[column] != index:
                deps.add(producer[column])
            elif column in producer:
                found.append(
                    CompileError(
                        f"transform {transform.name!r} reads its own output {column!r}",
                        file=file,
                        path=f"feature_groups.{group_name}.transforms[{index}]",
                        fix="read another column, or give the transform another name",
                    )
                )
            elif column not in base:
                found.append(
                    CompileError(
                        f"transform {transform.name!r} reads unknown column {column!r}",
                        file=file,
                        path=f"feature_groups.{group_name}.transforms[{index}]",
                        value=column,
                        fix=f"use a column of the source, a joined column or a transform output: "
                        f"{sorted(set(base) | set(producer))}",
                    )
                )
        needs[index] = deps
    order: list[int] = []
    state: dict[int, str] = {}

    def visit(node: int, trail: list[int]) -> None:
        if state.get(node) == "done":
            return
        if state.get(node) == "visiting":
            cycle = trail[trail.index(node) :] + [node]
            names = " -> ".join(group.transforms[i].name for i in cycle)
            found.append(
                CompileError(
                    f"transforms form a cycle: {names}",
                    file=file,
                    path=f"feature_groups.{group_name}.transforms",
                    fix="break the cycle: one of these transforms must read a source column instead",
                )
            )
            return
        state[node] = "visiting"
        for dep in sorted(needs[node]):
            visit(dep, [*trail, node])
        state[node] = "done"
        order.append(node)

    for index in range(len(group.transforms)):
        visit(index, [])
    if errors is None and len(found) > first:
        raise found[first]
    return tuple(group.transforms[i] for i in order), producer


def _base_origins(
    group: FeatureGroup,
    base: dict[str, Origin],
    producer: dict[str, int],
    column: str,
    seen: frozenset[str] = frozenset(),
) -> set[tuple[Origin, str]]:
    """Base columns behind ``column`` with the transform path that carries them."""
    if column in producer:
        transform = group.transforms[producer[column]]
        found: set[tuple[Origin, str]] = set()
        for upstream in transform.inputs():
            if upstream not in seen:
                for origin, trail in _base_origins(group, base, producer, upstream, seen | {column}):
                    found.add((origin, f"{trail} -> transform {transform.name}"))
        return found
    if column not in base:  # unknown: reported by the caller
        return set()
    return {(base[column], f"{base[column].source}.{base[column].column}")}


@dataclass(frozen=True)
class FeatureOrigin:
    """One source column behind one feature: the path that carries it and the column's privacy policy."""

    group: str
    feature: str
    origin: Origin
    trail: str
    policy: str | None  # e.g. "generalize (rule year)"; None: not PII


def _describe_policy(policy: object) -> str | None:
    if policy is None:
        return None
    fields = policy.model_dump(exclude_none=True)  # type: ignore[attr-defined]
    method = fields.pop("method")
    return f"{method} ({', '.join(f'{k} {v}' for k, v in fields.items())})" if fields else method


def feature_origins(spec: UseCase, group_name: str) -> list[FeatureOrigin]:
    """Column lineage of a (valid) group: every source column each feature reads, through which
    transforms, and its privacy policy; what a user checks before trusting a feature with PII."""
    group = spec.feature_groups[group_name]
    base = _available_base(spec, group_name, group)
    _, producer = _order_transforms(group_name, group, base, spec.file_of("feature_groups", group_name))
    found = []
    for feature in group.features:
        for column in feature.inputs():
            for origin, trail in sorted(
                _base_origins(group, base, producer, column), key=lambda item: (item[0].source, item[0].column)
            ):
                policy = spec.sources[origin.source].columns[origin.column].policy
                found.append(
                    FeatureOrigin(
                        group_name, feature.name, origin, f"{trail} -> feature {feature.name}", _describe_policy(policy)
                    )
                )
    return found


RESERVED_COLUMNS = ("feature_ts",)
"""Column names the engines add to every feature table (besides names starting with ``_``)."""


def group_problems(spec: UseCase, group_name: str) -> tuple[ResolvedGroup, list[CompileError]]:
    """Order a group's transforms and check every column its features read and every name they take;
    every problem found, not just the first."""
    file = spec.file_of("feature_groups", group_name)
    group = spec.feature_groups[group_name]
    base = _available_base(spec, group_name, group)
    errors: list[CompileError] = []
    ordered, producer = _order_transforms(group_name, group, base, file, errors)
    entity_key = spec.entities[group.entity].key if group.entity in spec.entities else None
    for index, feature in enumerate(group.features):
        where = f"feature_groups.{group_name}.features[{index}]"
        if feature.name == entity_key or feature.name in RESERVED_COLUMNS:
            errors.append(
                CompileError(
                    f"feature {feature.name!r} has the name of the "
                    + ("entity key" if feature.name == entity_key else "feature time column")
                    + " of the group's feature table",
                    file=file,
                    path=f"{where}.name",
                    value=feature.name,
                    fix="give the feature another name",
                )
            )
        for column in feature.inputs():
            if column not in base and column not in producer:
                errors.append(
                    CompileError(
                        f"feature {feature.name!r} reads unknown column {column!r}; no source column, joined "
                        "column or transform output has that name",
                        file=file,
                        path=where,
                        value=column,
                        fix=f"use one of {sorted(set(base) | set(producer))}",
                    )
                )
                continue
            for origin, trail in _base_origins(group, base, producer, column):
                problem = _pii_problem(spec, origin, trail, group_name, feature.name, where)
                if problem is not None and str(problem) not in {str(e) for e in errors}:
                    errors.append(problem)
    return ResolvedGroup(ordered, base), errors


def resolve_group(spec: UseCase, group_name: str) -> ResolvedGroup:
    """Order a group's transforms and check every column its features read; raises the first problem."""
    resolved, errors = group_problems(spec, group_name)
    if errors:
        raise errors[0]
    return resolved


def _pii_problem(
    spec: UseCase, origin: Origin, trail: str, group: str, feature: str, where: str
) -> CompileError | None:
    column = spec.sources[origin.source].columns[origin.column]
    path = f"{trail} -> feature {group}.{feature} -> offline store and Redis"
    if column.pii is True:
        return PrivacyError(
            f"PII column {origin.source}.{origin.column} has no policy and would reach a feature: {path}",
            file=spec.file_of("sources", origin.source),
            path=f"sources.{origin.source}.columns.{origin.column}.pii",
            value=True,
            fix="give the column a policy (drop, pseudonymize, encrypt or generalize) or stop reading it",
        )
    if column.policy is not None and column.policy.method == "drop":
        return CompileError(
            f"column {origin.source}.{origin.column} is dropped at ingestion by its privacy policy, "
            f"but a feature reads it: {path}",
            file=spec.file_of("feature_groups", group),
            path=where,
            value=origin.column,
            fix="read another column, or protect it with pseudonymize, encrypt or generalize instead of drop",
        )
    return None
