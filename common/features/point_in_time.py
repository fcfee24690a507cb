"""Point-in-time lookups: for each (entity, time) row, the feature values that
existed at that time, from a group's offline history.

A row at time ``t`` gets the history row with the greatest ``feature_ts <= t``
(the value the online store held at ``t``: README "Time semantics"), and nulls
when there is none or when it is older than the group's ``ttl``.

The join is a sort-merge style "as-of" join: labels and history rows of an
entity are unioned, ordered by time, and each label takes the last history
row before it with a window function. No cross join, no per-row Python.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from common.compile.plan import FEATURE_TS, GroupPlan

_ROW = "_pit_row"
_T = "_pit_t"
_IS_QUERY = "_pit_is_query"
_FOUND = "_pit_found"


def as_of(
    rows: DataFrame,
    history: DataFrame,
    plan: GroupPlan,
    time_column: str,
    features: list[str] | None = None,
    prefix: str = "",
) -> DataFrame:
    """``rows`` plus the group's features as of ``rows[time_column]`` for each row's entity.

    ``features`` defaults to all of the group's; output columns are
    ``prefix + name``, and ``prefix + "feature_ts"`` tells when the value was computed.
    """
    key = plan.entity_key
    names = list(features or plan.feature_names)
    unknown = sorted(set(names) - set(plan.feature_names))
    if unknown:
        from common.errors import CompileError

        raise CompileError(
            f"feature group {plan.name!r} has no feature(s) {unknown}",
            fix=f"use some of {list(plan.feature_names)}",
        )
    numbered = rows.withColumn(_ROW, F.monotonically_increasing_id())
    queries = numbered.select(
        F.col(key), F.col(time_column).cast("timestamp").alias(_T), F.col(_ROW), F.lit(1).alias(_IS_QUERY)
    )
    facts = history.select(
        F.col(key),
        F.col(FEATURE_TS).alias(_T),
        F.lit(None).cast("long").alias(_ROW),
        F.lit(0).alias(_IS_QUERY),
        F.struct(F.col(FEATURE_TS), *[F.col(n) for n in names]).alias(_FOUND),
    )
    both = queries.withColumn(_FOUND, F.lit(None).cast(facts.schema[_FOUND].dataType)).unionByName(facts)
    # history rows sort before a query at the same instant: feature_ts <= t counts
    upto = Window.partitionBy(key).orderBy(_T, _IS_QUERY).rowsBetween(Window.unboundedPreceding, 0)
    found = (
        both.withColumn(_FOUND, F.last(_FOUND, ignorenulls=True).over(upto))
        .where(F.col(_IS_QUERY) == 1)
        .select(_ROW, _T, _FOUND)
    )
    fresh = F.col(f"{_FOUND}.{FEATURE_TS}").isNotNull()
    if plan.ttl_s is not None:
        age = F.unix_micros(F.col(_T)) - F.unix_micros(F.col(f"{_FOUND}.{FEATURE_TS}"))
        fresh = fresh & (age <= F.lit(plan.ttl_s * 1_000_000))
    values = [F.when(fresh, F.col(f"{_FOUND}.{n}")).alias(prefix + n) for n in names]
    values.append(F.when(fresh, F.col(f"{_FOUND}.{FEATURE_TS}")).alias(prefix + FEATURE_TS))
    return numbered.join(found.select(_ROW, *values), on=_ROW, how="left").drop(_ROW)
