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


def lookup(store: OnlineStore, spec: FeatureSpec, keys: Sequence[Any], at_us: int | None = None) -> OnlineFeatures:
    """Features of ``keys`` as held online at ``at_us`` (epoch µs; default now), in one round trip."""
    now_us = int(time.time() * 1_000_000) if at_us is None else int(at_us)
    keys = list(keys)
    result = store.read(keys, [g.name for g in spec.groups])
    blocks: list[np.ndarray] = []
    times: dict[str, np.ndarray] = {}
    missing: list[list[str]] = [[] for _ in keys]
    for group in spec.groups:
        positions = [group.feature_names.index(name) for name in group.selected]
        values = np.full((len(keys), len(positions)), np.nan)
        stamps = np.full(len(keys), -1, dtype=np.int64)
        for row, key in enumerate(keys):
            vector = result.vectors.get((key, group.name))
            fresh = vector is not None and (
                group.ttl_s is None or now_us - vector.event_time_us <= group.ttl_s * 1_000_000
            )
            if fresh:
                values[row] = vector.values[positions]
                stamps[row] = vector.event_time_us
        absent = np.isnan(values)
        if absent.any():
            for row in np.flatnonzero(absent.any(axis=1)):
                missing[row] += [name for name, gone in zip(group.selected, absent[row], strict=True) if gone]
        blocks.append(values)
        times[group.name] = stamps
    frame = pd.DataFrame(np.hstack(blocks) if blocks else np.empty((len(keys), 0)), columns=list(spec.lookup_features))
    frame.insert(0, spec.entity_key, keys)
    return OnlineFeatures(frame, times, missing)
