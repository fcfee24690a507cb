"""Turn entity keys into a model's feature frame from the online store.

Used by the model's pyfunc (keys-only input) and by the REST service, so both
apply the same rule as the point-in-time training set: a group's vector older
than the group's ``ttl`` at the lookup time counts as missing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from common.compile.feature_spec import FeatureSpec
from common.online.base import OnlineGroup, OnlineStore, get_online_store


@dataclass
class OnlineFeatures:
    """One row per requested key: the looked-up features, when each group was computed, what was missing."""

    frame: pd.DataFrame  # entity key column + lookup features (NaN = missing)
    event_times_us: dict[str, np.ndarray] = field(default_factory=dict)  # group -> per row, -1 when missing
    missing: list[list[str]] = field(default_factory=list)  # per row: the missing feature names


def online_groups(spec: FeatureSpec) -> list[OnlineGroup]:
    """The online store's view of the groups a model reads."""
    return [OnlineGroup(g.name, g.feature_names, g.ttl_s) for g in spec.groups]


def open_model_store(spec: FeatureSpec, redis_url: str | None, backend: str = "redis") -> OnlineStore:
    """An online store for ``spec``'s use case with its groups registered (``REDIS_URL`` when url is None)."""
    return get_online_store(
        backend, url=redis_url, usecase=spec.usecase, version=spec.usecase_version, groups=online_groups(spec)
    )


@dataclass
class OnlineMatrix:
    """:class:`OnlineFeatures` without the frame: the looked-up values as one float64 matrix."""

    values: np.ndarray  # (rows, len(spec.lookup_features)), NaN = missing
    event_times_us: dict[str, np.ndarray]  # group -> per row, -1 when missing or stale
    missing: list[list[str]]  # per row: the missing feature names


def lookup_matrix(store: OnlineStore, spec: FeatureSpec, keys: Sequence[Any], at_us: int | None = None) -> OnlineMatrix:
    """Features of ``keys`` as held online at ``at_us`` (epoch µs; default now), in one round trip, as arrays."""
    now_us = int(time.time() * 1_000_000) if at_us is None else int(at_us)
    keys = keys if isinstance(keys, list) else list(keys)
    blocks = store.read_blocks(keys, [g.name for g in spec.groups])
    out = np.empty((len(keys), len(spec.lookup_features)))
    times: dict[str, np.ndarray] = {}
    missing: list[list[str]] = [[] for _ in keys]
    column = 0
    for group in spec.groups:
        block = blocks[group.name]
        stamps = block.event_time_us
        selected = out[:, column : column + len(group.selected)]
        column += len(group.selected)
        if group.selected == group.feature_names:
            selected[:] = block.values
        else:
            selected[:] = block.values[:, [group.feature_names.index(name) for name in group.selected]]
        if group.ttl_s is not None:
            stale = (stamps >= 0) & (now_us - stamps > group.ttl_s * 1_000_000)
            if stale.any():
                stamps = np.where(stale, -1, stamps)
                selected[stale] = np.nan
        absent = np.isnan(selected)
        if absent.any():
            for row in np.flatnonzero(absent.any(axis=1)):
                missing[row] += [name for name, gone in zip(group.selected, absent[row], strict=True) if gone]
        times[group.name] = stamps
    return OnlineMatrix(out, times, missing)


def lookup(store: OnlineStore, spec: FeatureSpec, keys: Sequence[Any], at_us: int | None = None) -> OnlineFeatures:
    """Features of ``keys`` as held online at ``at_us`` (epoch µs; default now), in one round trip."""
    keys = list(keys)
    found = lookup_matrix(store, spec, keys, at_us)
    frame = pd.DataFrame(found.values, columns=list(spec.lookup_features))
    frame.insert(0, spec.entity_key, keys)
    return OnlineFeatures(frame, found.event_times_us, found.missing)
