"""Glue between feature plans and the online store backends."""

from __future__ import annotations

from pyspark.sql import DataFrame

from common.compile.plan import FEATURE_TS, GroupPlan
from common.online.base import OnlineGroup, OnlineStore, get_online_store


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


def spark_online_writer(redis_url: str):
    """An OnlineWriter for the streaming job: Spark executors write their partitions."""
    from common.online.materialize import write_features_to_online_store

    def write(plan: GroupPlan, values: DataFrame) -> tuple[int, int]:
        result = write_features_to_online_store(
            values,
            usecase=plan.usecase,
            version=plan.usecase_version,
            group=plan.name,
            feature_names=plan.feature_names,
            entity_column=plan.entity_key,
            event_time_column=FEATURE_TS,
            redis_url=redis_url,
            ttl_seconds=plan.ttl_s,
        )
        return int(result[0]), int(result[1])

    return write
