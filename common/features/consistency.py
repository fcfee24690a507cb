"""Training/serving consistency: recompute in batch, compare with the online store.

For every entity the batch computation knows, the online vector is read and
compared with the batch value *at the vector's own event time* (the newest
event the stream processed for that entity). Values agree when
``|a - b| <= tol * max(1, |a|, |b|)``; null agrees only with null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from common.compile.plan import FEATURE_TS, GroupPlan
from common.features.backfill import join_tables
from common.features.compute import feature_history
from common.features.prepare import prepare
from common.lake.delta import read_bronze
from common.online.base import OnlineStore
from common.settings import Paths

READ_CHUNK = 2000


@dataclass
class FeatureStats:
    mismatches: int = 0
    max_abs_diff: float = 0.0


@dataclass
class GroupConsistency:
    group: str
    entities_checked: int = 0
    entities_mismatched: int = 0
    missing_online: int = 0
    behind: int = 0  # online event time older than the newest batch event: the stream lags
    features: dict[str, FeatureStats] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.entities_mismatched == 0 and self.missing_online == 0


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _equal(a: float | None, b: float | None, tol: float) -> tuple[bool, float]:
    """Whether two feature values agree, and their absolute difference (0 when one is missing)."""
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b), 0.0
    diff = abs(a - b)
    return diff <= tol * max(1.0, abs(a), abs(b)), diff


def check_group(
    spark: SparkSession, work: Paths, plan: GroupPlan, store: OnlineStore, tol: float = 1e-9
) -> GroupConsistency:
    """Compare every entity's online vector with the batch value at the vector's time."""
    prepared = prepare(plan, read_bronze(spark, work, plan.usecase, plan.source), join_tables(spark, work, plan))
    history = feature_history(plan, prepared)
    key = plan.entity_key
    history = history.cache()
    newest = {r[0]: int(r[1]) for r in history.groupBy(key).agg(F.max(F.unix_micros(FEATURE_TS))).collect()}
    report = GroupConsistency(plan.name, features={n: FeatureStats() for n in plan.feature_names})
    entities = sorted(newest)
    online: dict[str, tuple[int, dict[str, float | None]]] = {}
    for start in range(0, len(entities), READ_CHUNK):
        chunk = entities[start : start + READ_CHUNK]
        result = store.read(chunk, [plan.name])
        for (entity, _), vector in result.items():
            online[entity] = (vector.event_time_us, vector.as_dict())
    wanted = spark.createDataFrame([(e, t) for e, (t, _) in online.items()], f"{key} string, _t_us long").withColumn(
        FEATURE_TS, F.timestamp_micros("_t_us")
    )
    batch_rows = {
        r[key]: r.asDict()
        for r in history.join(F.broadcast(wanted.drop("_t_us")), on=[key, FEATURE_TS], how="inner").collect()
    }
    for entity in entities:
        report.entities_checked += 1
        if entity not in online:
            report.missing_online += 1
            if len(report.examples) < 5:
                report.examples.append(f"{entity}: no online vector")
            continue
        t_us, values = online[entity]
        batch = batch_rows.get(entity)
        if batch is None:
            report.entities_mismatched += 1
            if len(report.examples) < 5:
                report.examples.append(f"{entity}: online event time {t_us} us has no batch value")
            continue
        if t_us < newest[entity]:
            report.behind += 1
        bad = False
        for name in plan.feature_names:
            same, diff = _equal(values.get(name), batch[name], tol)
            stats = report.features[name]
            stats.max_abs_diff = max(stats.max_abs_diff, diff)
            if not same:
                stats.mismatches += 1
                bad = True
                if len(report.examples) < 5:
                    report.examples.append(f"{entity}.{name}: online {values.get(name)} != batch {batch[name]}")
        report.entities_mismatched += int(bad)
    history.unpersist()
    return report
