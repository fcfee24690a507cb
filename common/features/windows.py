"""Windowed aggregation over tiles: the tile partials, the history of values at
every event time, and the value at each entity's newest event.

Time semantics (docs/time-semantics.md): with slide ``s`` and window ``W``,
the value at time ``t`` aggregates the events with
``floor(t/s)*s + s - W <= ts <= t``: the ``W/s - 1`` whole tiles before the
tile of ``t``, plus that tile up to and including ``t``.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from common.compile.aggregates import AggPlan, merge
from common.compile.plan import EVENT_ID, FEATURE_TS, TILE, TS_MICROS, GroupPlan

MAX_TS = "_max_ts_us"  # newest event time in a tile, epoch microseconds


def value_column(agg: AggPlan) -> str:
    """The column holding ``agg``'s per-row contribution (see :func:`with_row_values`)."""
    return f"_v_{agg.name}"


def with_row_values(plan: GroupPlan, prepared: DataFrame) -> DataFrame:
    """Each feature's per-row contribution (null when the row does not count)."""
    return prepared.withColumns({value_column(a): a.row_value() for a in plan.aggregations})


def tiles(plan: GroupPlan, prepared: DataFrame) -> DataFrame:
    """Partials per (entity, tile): the unit the stream recomputes and stores."""
    rows = with_row_values(plan, prepared)
    aggregates = [F.max(TS_MICROS).alias(MAX_TS)]
    for agg in plan.aggregations:
        aggregates += agg.row_aggregates(value_column(agg), TS_MICROS, EVENT_ID)
    return rows.groupBy(plan.entity_key, TILE).agg(*aggregates)


def _partials_over_previous_tiles(plan: GroupPlan, tile_df: DataFrame) -> DataFrame:
    """For each (entity, tile): partials merged over the whole tiles before it in each window."""
    from common.compile.aggregates import group_merge

    columns: list[Column] = []
    for agg in plan.aggregations:
        lookback = agg.window_s - plan.slide_s
        for name, kind in agg.partial_names():
            if lookback <= 0:
                columns.append(F.lit(None).cast(tile_df.schema[name].dataType).alias(f"_prev_{name}"))
                continue
            frame = Window.partitionBy(plan.entity_key).orderBy(TILE).rangeBetween(-lookback, -plan.slide_s)
            columns.append(group_merge(kind, F.col(name), over=frame).alias(f"_prev_{name}"))
    return tile_df.select(plan.entity_key, TILE, *columns)


def history(plan: GroupPlan, prepared: DataFrame, tile_df: DataFrame | None = None) -> DataFrame:
    """Feature values at every distinct event time of every entity.

    Columns: entity key, ``feature_ts`` (timestamp) and one double per feature.
    """
    tile_df = tile_df if tile_df is not None else tiles(plan, prepared)
    previous = _partials_over_previous_tiles(plan, tile_df)
    rows = with_row_values(plan, prepared)
    # prefix within the tile: every event at or before this event's time (ties included)
    prefix = Window.partitionBy(plan.entity_key, TILE).orderBy(TS_MICROS).rangeBetween(Window.unboundedPreceding, 0)
    prefix_columns = []
    for agg in plan.aggregations:
        prefix_columns += agg.row_aggregates(value_column(agg), TS_MICROS, EVENT_ID, over=prefix)
    per_event = rows.select(plan.entity_key, TILE, TS_MICROS, *prefix_columns).dropDuplicates(
        [plan.entity_key, TS_MICROS]
    )
    joined = per_event.join(previous, on=[plan.entity_key, TILE], how="left")
    values = []
    for agg in plan.aggregations:
        kinds = dict(agg.partial_names())
        values.append(agg.finish(lambda name, kinds=kinds: merge(kinds[name], F.col(name), F.col(f"_prev_{name}"))))
    return joined.select(plan.entity_key, F.timestamp_micros(TS_MICROS).alias(FEATURE_TS), *values)


def latest(plan: GroupPlan, tile_df: DataFrame) -> DataFrame:
    """Feature values at each entity's newest event time, from its tiles alone.

    The newest event's tile is complete up to that event, so the value is the
    merge of the tiles in ``[tile(t) + s - W, tile(t)]`` for each window ``W``.
    """
    from common.compile.aggregates import group_merge

    newest = tile_df.groupBy(plan.entity_key).agg(F.max(MAX_TS).alias("_t_us"))
    with_t = tile_df.join(newest, on=plan.entity_key).withColumn(
        "_t_tile", F.floor(F.col("_t_us") / F.lit(1_000_000 * plan.slide_s)).cast("long") * plan.slide_s
    )
    aggregates = []
    for agg in plan.aggregations:
        start = F.col("_t_tile") + F.lit(plan.slide_s - agg.window_s)
        inside = F.col(TILE) >= start
        for name, kind in agg.partial_names():
            aggregates.append(group_merge(kind, F.when(inside, F.col(name))).alias(name))
    merged = with_t.groupBy(plan.entity_key, "_t_us").agg(*aggregates)
    values = [agg.finish(lambda name: F.col(name)) for agg in plan.aggregations]
    return merged.select(plan.entity_key, F.timestamp_micros("_t_us").alias(FEATURE_TS), *values)
