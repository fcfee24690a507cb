"""Point-in-time training sets: label rows joined with the feature values that
existed at each label's time (docs/time-semantics.md: the history row with the
greatest ``feature_ts <= t``; null when there is none or it is older than the
group's ``ttl``).

The join is common.features.point_in_time.as_of_join: one shuffle and one sort
for all groups; no cross join and no per-row Python.

Every Delta table is read at a pinned version, and the versions are returned, so
that the same call with ``versions=`` rebuilds an identical training set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.compile.models import ModelPlan, resolve_feature_refs
from common.compile.plan import FEATURE_TS, Plan
from common.errors import DataError
from common.features.offline import PARTITION, WRITE_ORDER, with_write_order
from common.features.point_in_time import HistoryInput, as_of_join
from common.lake.delta import local_folder
from common.lake.paths import history_path
from common.settings import Paths

LABEL = "label"


@dataclass(frozen=True)
class TableVersion:
    """One Delta table read at one version."""

    path: str
    version: int


@dataclass
class TrainingSet:
    """Label rows with their point-in-time features, and what was read to build them."""

    frame: DataFrame
    features: list[str]
    entity_key: str
    time_column: str
    versions: dict[str, TableVersion] = field(default_factory=dict)

    def lineage(self) -> dict[str, dict[str, object]]:
        """JSON-able {table name: {path, version}}, for MLflow."""
        return {name: {"path": v.path, "version": v.version} for name, v in sorted(self.versions.items())}


_COMMIT = re.compile(r"\d{20}\.json")  # a commit file in _delta_log; checkpoints and CRCs are not


def latest_version(spark: SparkSession, path: str) -> int | None:
    """The newest committed version of the Delta table at ``path``, or None when there is no table.

    A local table's version is the highest ``_delta_log/<version>.json``: one directory
    listing, no Spark job (``DeltaTable.isDeltaTable`` and ``history`` each run one per
    table). Other file systems ask Delta.
    """
    local = local_folder(path)
    if local is not None:
        log_dir = local / "_delta_log"
        if not log_dir.is_dir():
            return None
        versions = [int(p.name[:-5]) for p in os.scandir(log_dir) if _COMMIT.fullmatch(p.name)]
        return max(versions) if versions else None
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return None
    return int(DeltaTable.forPath(spark, path).history(1).select("version").first()[0])


def read_at(spark: SparkSession, path: str, version: int | None, what: str, fix: str) -> tuple[DataFrame, int]:
    """``path`` at ``version`` (the latest when None), and the version read."""
    latest = latest_version(spark, path)
    if latest is None:
        raise DataError(f"{what} does not exist at {path}. Fix: {fix}")
    pinned = latest if version is None else int(version)
    return spark.read.format("delta").option("versionAsOf", pinned).load(path), pinned


def create_training_set(
    labels: DataFrame,
    features: Sequence[str],
    *,
    plan: Plan,
    work: Paths,
    time_column: str,
    versions: Mapping[str, TableVersion | int] | None = None,
    time_range: tuple[datetime, datetime] | None = None,
) -> TrainingSet:
    """``labels`` plus, for each row, the referenced features as of ``labels[time_column]``.

    ``features`` are references such as ``activity.*`` or ``profile.tenure_days``;
    output columns are the feature names (as doubles). ``versions`` pins each
    group's history table ({group: version}); unpinned tables are read at their
    latest version, and :attr:`TrainingSet.versions` says which one. ``time_range``
    (earliest, latest label time), when the caller knows it (scoring does), saves the
    Spark job that would compute it to prune the histories.
    """
    spark = labels.sparkSession
    selected = resolve_feature_refs(plan.spec, list(features))
    keys = {plan.group(g).entity_key for g in selected}
    if len(keys) != 1:
        raise DataError(
            f"features {list(features)} describe different entities (keys {sorted(keys)}). Fix: pick one entity"
        )
    key = keys.pop()
    if key not in labels.columns or time_column not in labels.columns:
        raise DataError(
            f"label rows need columns {key!r} and {time_column!r}; they have {labels.columns}. "
            "Fix: select or rename them"
        )
    pinned: dict[str, TableVersion] = {}
    histories: dict[str, DataFrame] = {}
    for group_name, names in selected.items():
        group = plan.group(group_name)
        want = (versions or {}).get(group_name)
        version = want.version if isinstance(want, TableVersion) else want
        path = history_path(work, group)
        history, read = read_at(
            spark,
            path,
            version,
            f"feature history of group {group_name!r}",
            f"run `loom backfill --usecase {plan.usecase}` first",
        )
        pinned[group_name] = TableVersion(path, read)
        # the write order goes to the as-of join, whose window breaks equal feature_ts by it (latest wins)
        histories[group_name] = with_write_order(history).select(
            F.col(group.entity_key).alias(key),
            F.col(FEATURE_TS),
            F.col(PARTITION),
            F.col(WRITE_ORDER),
            *[F.col(n) for n in names],
        )

    if time_range is not None:
        times: Any = {"lo": time_range[0], "hi": time_range[1]}
    else:
        times = labels.select(F.min(F.col(time_column)).alias("lo"), F.max(F.col(time_column)).alias("hi")).first()
    inputs = []
    for group_name, names in selected.items():
        history = histories[group_name]
        ttl = plan.group(group_name).ttl_s
        if times is not None and times["hi"] is not None:
            # only dates that can hold the newest fresh value of some label
            history = history.where(F.col(PARTITION) <= F.to_date(F.lit(times["hi"])))
            if ttl is not None:
                earliest = F.date_sub(F.to_date(F.lit(times["lo"])), ttl // 86400 + 1)
                history = history.where(F.col(PARTITION) >= earliest)
        inputs.append(HistoryInput(plan.group(group_name), history, tuple(names)))
    frame = as_of_join(labels, inputs, time_column)
    flat = [n for names in selected.values() for n in names]
    return TrainingSet(frame=frame, features=flat, entity_key=key, time_column=time_column, versions=pinned)


def model_training_set(
    spark: SparkSession,
    plan: Plan,
    model: ModelPlan,
    work: Paths,
    versions: Mapping[str, TableVersion | int] | None = None,
) -> TrainingSet:
    """The training set of ``model``: its label rows (from the label source's bronze
    table, pinned like the feature tables; the latest ingested row per label ``id``:
    common.models.labels) with its features as of each label's time, and the split
    column (``_split``) when the model's split is given by one."""
    from common.lake.paths import bronze_path
    from common.models.labels import label_rows
    from common.models.split import SPLIT_COLUMN

    wanted = dict(versions or {})
    label_table = f"bronze.{model.label_source}"
    want = wanted.pop(label_table, None)
    bronze, read = read_at(
        spark,
        bronze_path(work, plan.usecase, model.label_source),
        want.version if isinstance(want, TableVersion) else want,
        f"bronze table of label source {model.label_source!r}",
        f"run `loom ingest --usecase {plan.usecase}` first",
    )
    split_column = model.spec.split.column
    labels = label_rows(
        bronze,
        plan.spec.sources[model.label_source],
        key=model.entity_key,
        time=model.label_time,
        expr=model.label_expr,
        label=LABEL,
        extra={SPLIT_COLUMN: split_column} if split_column else None,
    )
    refs = [f"{g.name}.{f}" for g in model.feature_spec.groups for f in g.selected]
    result = create_training_set(labels, refs, plan=plan, work=work, time_column=model.label_time, versions=wanted)
    result.versions[label_table] = TableVersion(bronze_path(work, plan.usecase, model.label_source), read)
    return result
