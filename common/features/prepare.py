"""Row-level stage: enrichment joins, transforms, and the engine's time columns."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from common.compile.plan import EVENT_ID, TILE, TS_MICROS, GroupPlan
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


def enrich(plan: GroupPlan, df: DataFrame, tables: dict[str, DataFrame]) -> DataFrame:
    """Stream-static joins: add the joined columns of each table's current row.

    ``tables[source]`` is the table source's bronze DataFrame (all versions);
    its newest row per entity is joined, in batch and in streaming alike.
    """
    for join in plan.joins:
        current = latest_rows(tables[join.source], plan.entity_key, join.event_time)
        wanted = [c for c in join.columns if c not in df.columns]
        if wanted:
            df = df.join(current.select(plan.entity_key, *wanted), on=plan.entity_key, how="left")
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


def prepare(plan: GroupPlan, df: DataFrame, tables: dict[str, DataFrame] | None = None) -> DataFrame:
    """Source rows -> rows ready for aggregation (same function in batch and streaming)."""
    df = enrich(plan, df, tables or {})
    df = apply_transforms(plan, df)
    df = add_time_columns(plan, df)
    if plan.event_time is not None:
        df = df.where(F.col(plan.event_time).isNotNull() & F.col(plan.entity_key).isNotNull())
    return df
