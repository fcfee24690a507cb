"""Glue between feature plans and the online store backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyspark.sql import DataFrame

from common.compile.plan import FEATURE_TS, GroupPlan
from common.online.base import OnlineGroup, OnlineStore, get_online_store

if TYPE_CHECKING:
    import pyarrow as pa


def online_group(plan: GroupPlan) -> OnlineGroup:
    """The online store's view of a compiled feature group."""
    return OnlineGroup(name=plan.name, feature_names=plan.feature_names, ttl_seconds=plan.ttl_s)


def open_store(plan_groups: list[GroupPlan], redis_url: str, backend: str = "redis") -> OnlineStore:
    """An online store for the use case of ``plan_groups`` with those groups registered."""
    first = plan_groups[0]
    return get_online_store(
        backend,
        url=redis_url,
        usecase=first.usecase,
        version=first.usecase_version,
        groups=[online_group(g) for g in plan_groups],
    )


class RedisFeatureWriter:
    """The streaming job's writer of a group's values to the Redis online store (an ``OnlineWriter``):
    called with a DataFrame, Spark's executors write its partitions; :meth:`write_arrow` writes rows already
    collected to the driver (a small micro-batch), with no Spark job."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url

    def __repr__(self) -> str:  # no URL: it may carry a password
        return "RedisFeatureWriter()"

    def __call__(self, plan: GroupPlan, values: DataFrame | pa.Table) -> tuple[int, int]:
        from common.online.materialize import write_features_to_online_store

        result = write_features_to_online_store(
            values,
            usecase=plan.usecase,
            version=plan.usecase_version,
            group=plan.name,
            feature_names=plan.feature_names,
            entity_column=plan.entity_key,
            event_time_column=FEATURE_TS,
            redis_url=self.redis_url,
            ttl_seconds=plan.ttl_s,
        )
        return int(result[0]), int(result[1])

    def write_arrow(self, plan: GroupPlan, values: pa.Table) -> tuple[int, int]:
        """Write the Arrow table ``values`` (entity key, ``feature_ts``, the features) from this process: the
        stream's batch handler takes this method as the sign that the writer accepts rows on the driver."""
        return self(plan, values)


def spark_online_writer(redis_url: str) -> RedisFeatureWriter:
    """An OnlineWriter for the streaming job (and the publish job): Spark executors write a DataFrame's
    partitions; a small micro-batch on the driver is written from there."""
    return RedisFeatureWriter(redis_url)
