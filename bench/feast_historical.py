"""Feast's ``get_historical_features`` on Loom's training-set inputs, timed.

Runs inside the bench-only Feast virtualenv (``make feast-venv``), never in
Loom's: it imports Feast and pandas only. The training-set bench exports the
feature histories and the label rows to Parquet and calls this script once per
size; it prints one JSON object on its last line.

Usage: python bench/feast_historical.py SPEC.json

SPEC holds ``entity`` (join key), ``time_column`` (label time), ``labels``
(Parquet path) and ``views``: a list of ``{name, path, ttl_s, features}``
whose Parquet files have the join key, ``feature_ts`` and the features.
The repository Feast needs (registry, ``feature_store.yaml``) is made in a
temporary folder with the default file offline store.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

_STORE_YAML = """project: loom_bench
provider: local
registry: {registry}
online_store:
  type: sqlite
  path: {online}
offline_store:
  type: file
entity_key_serialization_version: 3
"""


def _store(folder: Path, spec: dict):
    """A Feast store in ``folder`` with one feature view per history."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Float64

    (folder / "feature_store.yaml").write_text(
        _STORE_YAML.format(registry=folder / "registry.db", online=folder / "online.db")
    )
    store = FeatureStore(repo_path=str(folder))
    entity = Entity(name="entity", join_keys=[spec["entity"]])
    views = [
        FeatureView(
            name=view["name"],
            entities=[entity],
            ttl=timedelta(seconds=view["ttl_s"]) if view["ttl_s"] else timedelta(0),
            schema=[Field(name=f, dtype=Float64) for f in view["features"]],
            source=FileSource(path=view["path"], timestamp_field="feature_ts"),
            online=False,
        )
        for view in spec["views"]
    ]
    store.apply([entity, *views])
    return store


def main(spec_path: str) -> None:
    import pandas as pd

    spec = json.loads(Path(spec_path).read_text())
    with tempfile.TemporaryDirectory(prefix="loom-bench-feast-") as folder:
        store = _store(Path(folder), spec)
        started = time.perf_counter()
        labels = pd.read_parquet(spec["labels"]).rename(columns={spec["time_column"]: "event_timestamp"})
        labels["event_timestamp"] = pd.to_datetime(labels["event_timestamp"], utc=True)
        refs = [f"{view['name']}:{f}" for view in spec["views"] for f in view["features"]]
        frame = store.get_historical_features(entity_df=labels, features=refs).to_df()
        seconds = time.perf_counter() - started
        first = spec["views"][0]["features"][0]
    print(json.dumps({"seconds": seconds, "rows": len(frame), "with_first": int(frame[first].notna().sum())}))


if __name__ == "__main__":
    main(sys.argv[1])
