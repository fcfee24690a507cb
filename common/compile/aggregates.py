"""Windowed aggregations as mergeable partials.

Every aggregation is kept as a few *partials* that can be computed per tile
and merged across tiles: counts and sums add, minima take the least, distinct
values union, "last" keeps the greatest (time, id, value) struct. The same
partials and the same merge/finish expressions serve the batch backfill and the
streaming job, which is why both give the same number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column, WindowSpec
from pyspark.sql import functions as F

# partial kind -> how two partials merge and how a group of them aggregates
MergeKind = str  # "sum" | "min" | "max" | "set" | "last"

PARTIALS: dict[str, tuple[tuple[str, MergeKind], ...]] = {
    "count": (("n", "sum"),),
    "sum": (("n", "sum"), ("s", "sum")),
    "avg": (("n", "sum"), ("s", "sum")),
    "min": (("m", "min"),),
    "max": (("m", "max"),),
    "stddev": (("n", "sum"), ("s", "sum"), ("ss", "sum")),
    "count_distinct": (("set", "set"),),
    "last": (("last", "last"),),
}


@dataclass(frozen=True)
class AggPlan:
    """One windowed feature: what it aggregates, over which window, from which partials."""

    name: str
    agg: str
    window_s: int
    value_sql: str | None
    where_sql: str | None

    def partial_names(self) -> list[tuple[str, MergeKind]]:
        return [(f"{self.name}__{suffix}", kind) for suffix, kind in PARTIALS[self.agg]]

    # -- per-row inputs ------------------------------------------------------
    def condition(self) -> Column:
        cond = F.expr(self.where_sql) if self.where_sql else F.lit(True)
        if self.value_sql is not None:
            cond = cond & F.expr(self.value_sql).isNotNull()
        return F.coalesce(cond, F.lit(False))

    def row_value(self) -> Column:
        """The value this row contributes, null when it does not count."""
        if self.value_sql is None:
            return F.when(self.condition(), F.lit(1.0))
        raw = F.expr(self.value_sql)
        value = raw.cast("string") if self.agg == "count_distinct" else raw.cast("double")
        return F.when(self.condition(), value)

    def row_aggregates(self, value_col: str, ts_col: str, id_col: str, over: WindowSpec | None = None) -> list[Column]:
        """Aggregate expressions that build this feature's partials from rows.

        ``value_col`` holds :meth:`row_value`. Without ``over`` they are for a
        groupBy (tiles); with it they run as window functions (prefix in a tile).
        """

        def agg(expr: Column) -> Column:
            return expr.over(over) if over is not None else expr

        value = F.col(value_col)
        out: list[Column] = []
        for name, _ in self.partial_names():
            suffix = name.rsplit("__", 1)[1]
            if suffix == "n":
                expr = agg(F.count(value)).cast("double")
            elif suffix == "s":
                expr = agg(F.sum(value))
            elif suffix == "ss":
                expr = agg(F.sum(value * value))
            elif suffix == "m":
                expr = agg(F.min(value) if self.agg == "min" else F.max(value))
            elif suffix == "set":
                expr = agg(F.collect_set(value))
            else:  # last: greatest (time, id, value) among rows that count
                expr = agg(F.max(F.when(value.isNotNull(), F.struct(F.col(ts_col), F.col(id_col), value.alias("v")))))
            out.append(expr.alias(name))
        return out

    # -- finishing -----------------------------------------------------------
    def finish(self, partial: Callable[[str], Column]) -> Column:
        """Final double value from merged partials (``partial(name)`` gives each)."""
        p = {name.rsplit("__", 1)[1]: partial(name) for name, _ in self.partial_names()}
        if self.agg == "count":
            value = F.coalesce(p["n"], F.lit(0.0))
        elif self.agg == "sum":
            value = F.when(F.coalesce(p["n"], F.lit(0.0)) > 0, p["s"]).otherwise(F.lit(0.0))
        elif self.agg == "avg":
            value = F.when(p["n"] > 0, p["s"] / p["n"])
        elif self.agg in ("min", "max"):
            value = p["m"]
        elif self.agg == "stddev":
            variance = (p["ss"] - p["s"] * p["s"] / p["n"]) / (p["n"] - 1)
            value = F.when(p["n"] >= 2, F.sqrt(F.greatest(variance, F.lit(0.0))))
        elif self.agg == "count_distinct":
            value = F.coalesce(F.size(p["set"]), F.lit(0)).cast("double")
        else:
            value = p["last"].getField("v")
        return value.cast("double").alias(self.name)


def merge(kind: MergeKind, left: Column, right: Column) -> Column:
    """Merge two partials of the same kind; a null partial means 'no rows'."""
    if kind == "sum":
        return F.when(left.isNull(), right).when(right.isNull(), left).otherwise(left + right)
    if kind == "min":
        return F.least(left, right)
    if kind == "max":
        return F.greatest(left, right)
    if kind == "set":
        return F.array_union(F.coalesce(left, F.array()), F.coalesce(right, F.array()))
    if kind == "last":
        return F.greatest(left, right)
    raise ValueError(f"unknown partial kind {kind}")


def group_merge(kind: MergeKind, column: Column, over: WindowSpec | None = None) -> Column:
    """Aggregate many partials of one kind (the tiles of a window) into one.

    With ``over`` the aggregation runs as a window function.
    """

    def agg(expr: Column) -> Column:
        return expr.over(over) if over is not None else expr

    if kind == "sum":
        return agg(F.sum(column))
    if kind == "min":
        return agg(F.min(column))
    if kind in ("max", "last"):
        return agg(F.max(column))
    if kind == "set":
        return F.array_distinct(F.flatten(agg(F.collect_list(column))))
    raise ValueError(f"unknown partial kind {kind}")
