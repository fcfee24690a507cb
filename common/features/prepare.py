"""Row-level stage: enrichment joins, transforms, and the engine's time columns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from common.compile.plan import EVENT_ID, TILE, TS_MICROS, GroupPlan, JoinPlan
from common.compile.transforms import columns_for


def first_per_key(df: DataFrame, keys: Sequence[str], order: Sequence[Column]) -> DataFrame:
    """One row per value of ``keys``: the first in ``order``."""
    rank = F.row_number().over(Window.partitionBy(*keys).orderBy(*order))
    return df.withColumn("_rank", rank).where(F.col("_rank") == 1).drop("_rank")


def latest_rows(df: DataFrame, key: str, event_time: str | None) -> DataFrame:
    """One row per ``key``: the newest by ``event_time`` (any one if there is none)."""
    if event_time is None:
        return df.dropDuplicates([key])
    return first_per_key(df, [key], [F.col(event_time).desc_nulls_last()])


def join_rows(plan: GroupPlan, join: JoinPlan, table: DataFrame) -> DataFrame:
    """A join table's current rows: from its bronze DataFrame (all versions), the newest row per entity, with
    the entity key and the join's columns."""
    return latest_rows(table, plan.entity_key, join.event_time).select(plan.entity_key, *join.columns)


def enrich(
    plan: GroupPlan,
    df: DataFrame,
    tables: dict[str, DataFrame],
    current: Mapping[str, DataFrame] | None = None,
) -> DataFrame:
    """Stream-static joins: add the joined columns of each table's current row.

    ``tables[source]`` is the table source's bronze DataFrame (all versions);
    its newest row per entity is joined, in batch and in streaming alike.
    ``current[source]``, when given, are those rows already (:func:`join_rows`; the stream's cached copy).
    """
    for join in plan.joins:
        wanted = [c for c in join.columns if c not in df.columns]
        if wanted:
            rows = current[join.source] if current else join_rows(plan, join, tables[join.source])
            df = df.join(rows.select(plan.entity_key, *wanted), on=plan.entity_key, how="left")
    return df


def apply_transforms(plan: GroupPlan, df: DataFrame) -> DataFrame:
    """The group's row-level transforms, in dependency order."""
    for transform in plan.transforms:
        df = df.withColumns(dict(columns_for(transform)))
    return df


def add_time_columns(plan: GroupPlan, df: DataFrame) -> DataFrame:
    """Event time in microseconds, the tile it falls in, and a stable event id."""
    if plan.event_time is None:
        return df
    ts = F.col(plan.event_time)
    event_id = F.col(plan.id_column).cast("string") if plan.id_column else F.sha2(F.to_json(F.struct("*")), 256)
    return df.withColumns(
        {
            TS_MICROS: F.unix_micros(ts),
            TILE: F.floor(F.unix_seconds(ts) / plan.slide_s).cast("long") * plan.slide_s,
            EVENT_ID: event_id,
        }
    )


def prepare(
    plan: GroupPlan,
    df: DataFrame,
    tables: dict[str, DataFrame] | None = None,
    current: Mapping[str, DataFrame] | None = None,
) -> DataFrame:
    """Source rows -> rows ready for aggregation (same function in batch and streaming); ``current``: the join
    tables' current rows, instead of ``tables`` (see :func:`enrich`)."""
    df = enrich(plan, df, tables or {}, current)
    df = apply_transforms(plan, df)
    df = add_time_columns(plan, df)
    if plan.event_time is not None:
        df = df.where(F.col(plan.event_time).isNotNull() & F.col(plan.entity_key).isNotNull())
    return df
