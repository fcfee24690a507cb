"""The online store contract: what a backend (Redis first) must do, and the registry of backends.

A backend stores one encoded vector per (entity, feature group) with its event
time and schema version (see :mod:`common.online.encoding`), refuses writes
older than what it holds, and serves many entities and groups in one round trip.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from common.compile.event_time import from_micros
from common.errors import ConfigError, DataError
from common.online.encoding import as_matrix, schema_fingerprint

if TYPE_CHECKING:
    from common.spec.features import FeatureGroup


@dataclass(frozen=True)
class OnlineGroup:
    """What the online store needs to know about a feature group."""

    name: str
    feature_names: tuple[str, ...]
    ttl_seconds: int | None = None  # Redis expiry, counted from the write; None = keep

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        if not self.feature_names:
            raise ConfigError(f"online group {self.name!r} has no features. Fix: list at least one feature name")
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ConfigError(f"online group {self.name!r} lists a feature twice: {list(self.feature_names)}")

    @property
    def schema_version(self) -> int:
        """uint32 fingerprint of the feature name list, stored in every blob."""
        return schema_fingerprint(self.feature_names)

    @classmethod
    def from_spec(cls, name: str, group: FeatureGroup) -> OnlineGroup:
        """The online view of a feature group of the metadata."""
        from common.spec.base import duration_seconds

        ttl = duration_seconds(group.ttl) if group.ttl else None
        return cls(name=name, feature_names=tuple(f.name for f in group.features), ttl_seconds=ttl)


@dataclass(frozen=True, slots=True)
class FeatureVector:
    """One entity's values of one group, as stored. NaN in ``values`` means missing."""

    names: tuple[str, ...]
    values: np.ndarray
    event_time_us: int
    schema_version: int

    @property
    def event_time(self) -> datetime:
        return from_micros(self.event_time_us)

    def as_dict(self) -> dict[str, float | None]:
        """Feature name -> value, None for missing (NaN)."""
        return {n: (None if v != v else v) for n, v in zip(self.names, self.values.tolist(), strict=True)}

    def __getitem__(self, name: str) -> float | None:
        value = float(self.values[self.names.index(name)])
        return None if value != value else value


@dataclass(frozen=True, slots=True)
class SchemaMismatch:
    """A stored vector whose schema version is not the one the reader expects."""

    expected: int
    found: int | None  # None when the stored value is not a Loom vector at all
    event_time_us: int | None = None


EntityGroup = tuple[Any, str]  # (entity key as given to read, group name)


@dataclass
class ReadResult(Mapping[EntityGroup, FeatureVector]):
    """Vectors found, keyed by (entity key, group name); plus what was missing or mismatched.

    Only vectors with the expected schema version are in the mapping: the
    others are listed in ``mismatched`` and never decoded with the wrong names.
    """

    vectors: dict[EntityGroup, FeatureVector] = field(default_factory=dict)
    missing: list[EntityGroup] = field(default_factory=list)
    mismatched: dict[EntityGroup, SchemaMismatch] = field(default_factory=dict)

    def __getitem__(self, key: EntityGroup) -> FeatureVector:
        return self.vectors[key]

    def __iter__(self) -> Iterator[EntityGroup]:
        return iter(self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)


@dataclass(frozen=True, slots=True)
class GroupBlock:
    """One group's vectors for many entities as arrays (the serving fast path reads these, no objects per row)."""

    values: np.ndarray  # float64 (entities, features), NaN where absent, mismatched or missing
    event_time_us: np.ndarray  # int64 (entities,), -1 where the vector is absent or mismatched


class WriteResult(NamedTuple):
    """How many vectors were written, and how many were refused as older than the stored one."""

    written: int
    skipped: int


def epoch_micros(times: object) -> np.ndarray:
    """Event times as int64 microseconds since the epoch.

    Integers are taken as microseconds already; datetimes, numpy datetime64,
    pandas or Arrow timestamps are converted (naive values are read as UTC).
    Raises DataError for a missing (null/NaT) time.
    """
    if _is_arrow(times):
        times = times.to_numpy(zero_copy_only=False)  # type: ignore[attr-defined]
    raw = np.asarray(times)
    if raw.dtype.kind in "iu":
        return raw.astype(np.int64, copy=False).reshape(-1)
    import pandas as pd

    index = pd.DatetimeIndex(pd.to_datetime(raw.reshape(-1), utc=True))
    if index.hasnans:
        raise DataError(
            f"{int(index.isna().sum())} event time(s) are missing (null). "
            "Fix: drop or fill rows without an event time before writing to the online store"
        )
    return index.as_unit("us").asi8


def _is_arrow(value: object) -> bool:
    return type(value).__module__.startswith("pyarrow")


class OnlineStore(ABC):
    """An online feature store: latest vector per (entity, group), guarded by event time."""

    def __init__(self, groups: Iterable[OnlineGroup] = ()) -> None:
        self._groups: dict[str, OnlineGroup] = {}
        for group in groups:
            self.register(group)

    def register(self, group: OnlineGroup) -> None:
        """Make ``group`` known by name to :meth:`read` and :meth:`delete_entity`."""
        self._groups[group.name] = group

    def group(self, group: OnlineGroup | str) -> OnlineGroup:
        """The registered group named ``group`` (or ``group`` itself, registering it)."""
        if isinstance(group, OnlineGroup):
            self._groups.setdefault(group.name, group)
            return group
        try:
            return self._groups[group]
        except KeyError:
            raise ConfigError(
                f"unknown feature group {group!r} for this online store. "
                f"Fix: use one of {sorted(self._groups)} or pass groups=[OnlineGroup(...)] when opening it"
            ) from None

    @property
    def groups(self) -> dict[str, OnlineGroup]:
        return dict(self._groups)

    @abstractmethod
    def write(
        self,
        group: OnlineGroup | str,
        entity_keys: Sequence[Any],
        values: object,
        event_times: object,
    ) -> WriteResult:
        """Write one vector per entity: ``values`` is (n, features) float (None/NaN = missing).

        A vector older (by event time) than the stored one is skipped; an equal
        event time overwrites, so replays are idempotent.
        """

    def write_frame(
        self,
        group: OnlineGroup | str,
        frame: object,
        *,
        entity_column: str,
        event_time_column: str,
    ) -> WriteResult:
        """Write a pandas DataFrame or pyarrow Table with the group's feature columns."""
        spec = self.group(group)
        columns = [entity_column, event_time_column, *spec.feature_names]
        available = list(getattr(frame, "column_names", None) or getattr(frame, "columns", []))
        absent = [c for c in columns if c not in available]
        if absent:
            raise DataError(
                f"columns {absent} are missing from the frame written to group {spec.name!r}. "
                f"Fix: provide them (the frame has {available})"
            )
        if _is_arrow(frame):
            keys = frame.column(entity_column).to_pylist()
            times = frame.column(event_time_column)
            matrix = np.column_stack(
                [frame.column(n).to_numpy(zero_copy_only=False).astype(np.float64) for n in spec.feature_names]
            )
        else:
            keys = frame[entity_column].tolist()
            times = frame[event_time_column].to_numpy()
            matrix = frame[list(spec.feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)
        return self.write(spec, keys, matrix, times)

    @abstractmethod
    def read(self, entity_keys: Sequence[Any], groups: Sequence[OnlineGroup | str]) -> ReadResult:
        """The vectors of every (entity, group) pair, in one round trip to the store."""

    def read_blocks(self, entity_keys: Sequence[Any], groups: Sequence[OnlineGroup | str]) -> dict[str, GroupBlock]:
        """Like :meth:`read` (one round trip), as one :class:`GroupBlock` per group name.

        Backends override it to decode straight into arrays; this default goes through :meth:`read`.
        """
        specs = [self.group(g) for g in groups]
        keys = list(entity_keys)
        result = self.read(keys, specs)
        blocks: dict[str, GroupBlock] = {}
        for spec in specs:
            values = np.full((len(keys), len(spec.feature_names)), np.nan)
            times = np.full(len(keys), -1, dtype=np.int64)
            for row, key in enumerate(keys):
                vector = result.vectors.get((key, spec.name))
                if vector is not None:
                    values[row] = vector.values
                    times[row] = vector.event_time_us
            blocks[spec.name] = GroupBlock(values, times)
        return blocks

    @abstractmethod
    def delete_entity(self, entity_key: Any, groups: Sequence[OnlineGroup | str] | None = None) -> int:
        """Delete the entity's vectors (all registered groups by default); returns how many existed."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_matrix(group: OnlineGroup, values: object, rows: int) -> np.ndarray:
    """``values`` as float64 (rows, features) for ``group``, or a DataError that says what is wrong."""
    try:
        matrix = as_matrix(values, len(group.feature_names))
    except (TypeError, ValueError) as err:
        raise DataError(
            f"values written to group {group.name!r} must be numbers, one row of "
            f"{len(group.feature_names)} per entity ({err}). Fix: pass a (rows, features) float matrix"
        ) from None
    if matrix.shape[0] != rows:
        raise DataError(
            f"group {group.name!r}: {rows} entity keys but {matrix.shape[0]} rows of values. "
            "Fix: pass one row of values per entity key"
        )
    return matrix


# backend name -> "module:Class", imported on first use so that unused clients are not required
_BACKENDS: dict[str, str] = {"redis": "common.online.redis_store:RedisOnlineStore"}


def register_backend(name: str, target: str | type[OnlineStore]) -> None:
    """Add a backend: ``target`` is an OnlineStore subclass or its ``"module:Class"`` path."""
    _BACKENDS[name] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def known_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_online_store(name: str, **config: Any) -> OnlineStore:
    """Open the online store backend ``name`` (e.g. ``"redis"``) with its ``config``."""
    target = _BACKENDS.get(name)
    if target is None:
        raise ConfigError(
            f"unknown online store backend {name!r}. Fix: use one of {known_backends()} "
            "(or register one with common.online.register_backend)"
        )
    module_name, _, class_name = target.partition(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    return backend(**config)
