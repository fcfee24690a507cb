"""Point-in-time lookups: for each (entity, time) row, the feature values that
existed at that time, from feature histories.

A row at time ``t`` gets, per group, the history row with the greatest
``feature_ts <= t`` (the value the online store held at ``t``: docs/time-semantics.md), and nulls when there is none or when it is older than the group's
``ttl`` (an age of exactly ``ttl`` still counts).

One pass for all groups: the rows and the history rows of every group are
unioned, partitioned by entity, sorted by time (history before rows at the same
instant; history rows of one time in write order, so the latest written of a
key that was written twice comes last and wins: common/features/offline.py),
and each row takes, per group, the last history row before it with a window
function. The rows travel through the sort as a struct, so nothing is
joined back: one shuffle, no cross join, no per-row Python, and no reliance on
generated row ids (which Spark may recompute differently).

Measured and slower at 1M labels × 10.1M history rows on local[2] (so not
redone): a partition-local join in Arrow/numpy (the same union, repartitioned
by entity, ``mapInArrow``, a numpy sort of the four key columns): ~1.5× this
join's CPU, because handing the 11M union rows to Python costs the JVM more
than the sort and window (prototype and figures: branch
``issue-21c-arrow-prototype``). Measured and slower at 300k labels × 3.03M
history rows, alternating with this join in one process (load 7–8): a narrow
sort, then a fetch of the winners (rows and history reduced to entity, time,
kind and write order through the shuffle, sort and window, which name each
row's winning history row per group, computed once with a local checkpoint;
then the names broadcast against the streamed, never shuffled history, and
the winners joined to the rows): 18.2 and 21.5 s wall, 14.7 and 18.3 s of
driver JVM CPU, against 13.8 and 17.8 s, 12.8 and 14.2 s for this join; and
at 1M labels × 10.1M rows (load 2.6) 19.9 s and 38.5 CPU s against 17.7 s and
34.4 CPU s. Its narrow shuffle, sort and window alone took about 11 s, so
carrying the wide rows through the sort is not most of this join's cost
(prototype: branch ``issue-21-narrow-prototype``). Measured and slower at 300k
labels × 3.03M history rows (stop 24, load 3–6): no sort of the history at all,
each history row assigned to the first label time at or after it (per entity, the
sorted label times), the latest row per (entity, label) kept by a hash aggregate
of longs, carried forward over the 300k label slots, the winners' wide rows
fetched by a join. With the index computed by a lambda over the label-time array
(interpreted, not code-generated), the whole join took 31–36 s against 8.7–16 s
for this one; with a broadcast join on entity and a range condition instead, the
label times, intervals, assignment and aggregate alone took about 7 s, before the
fetch and the joins back to the labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from common.compile.plan import FEATURE_TS, GroupPlan
from common.errors import CompileError, DataError
from common.features.offline import WRITE_ORDER, with_write_order

_T = "_pit_t"
_KIND = "_pit_kind"  # 0 = history row, 1 = query row: history sorts first at equal times
_ROW = "_pit_row"
_W = "_pit_w"  # a history row's write order (null for query rows): breaks equal times, latest written last


@dataclass(frozen=True)
class HistoryInput:
    """One group's history (entity key, ``feature_ts``, features) and the features to take from it."""

    plan: GroupPlan
    history: DataFrame
    features: tuple[str, ...]
    time_column: str | None = None  # output column with the value's feature_ts; None = not returned


def as_of_join(rows: DataFrame, inputs: Sequence[HistoryInput], time_column: str) -> DataFrame:
    """``rows`` plus, for each input, its features (as doubles) as of ``rows[time_column]``."""
    keys = {i.plan.entity_key for i in inputs}
    if len(keys) != 1:
        raise DataError(f"feature groups {[i.plan.name for i in inputs]} have different entity keys {sorted(keys)}")
    key = keys.pop()
    for item in inputs:
        unknown = sorted(set(item.features) - set(item.plan.feature_names))
        if unknown:
            raise CompileError(
                f"feature group {item.plan.name!r} has no feature(s) {unknown}",
                fix=f"use some of {list(item.plan.feature_names)}",
            )
    if key not in rows.columns or time_column not in rows.columns:
        raise DataError(
            f"rows need columns {key!r} and {time_column!r}; they have {rows.columns}. Fix: select or rename them"
        )
    columns = rows.columns
    queries = rows.select(
        F.col(key),
        F.col(time_column).cast("timestamp").alias(_T),
        F.lit(1).alias(_KIND),
        F.lit(None).cast("long").alias(_W),
        F.struct(*[F.col(c) for c in columns]).alias(_ROW),
    )
    null_row = F.lit(None).cast(queries.schema[_ROW].dataType)
    facts = {
        f"_g{i}": with_write_order(item.history).select(
            F.col(item.plan.entity_key).alias(key),
            F.col(FEATURE_TS).alias(_T),
            F.lit(0).alias(_KIND),
            F.col(WRITE_ORDER).alias(_W),
            F.struct(F.col(FEATURE_TS), *[F.col(n).cast("double").alias(n) for n in item.features]).alias(f"_g{i}"),
        )
        for i, item in enumerate(inputs)
    }
    types = {name: df.schema[name].dataType for name, df in facts.items()}
    both = queries.select("*", *[F.lit(None).cast(types[g]).alias(g) for g in facts])
    for name, df in facts.items():
        others = [F.lit(None).cast(types[g]).alias(g) for g in facts if g != name]
        both = both.unionByName(df.select(key, _T, _KIND, _W, null_row.alias(_ROW), name, *others))
    order = [F.col(_T), F.col(_KIND), F.col(_W).asc_nulls_first()]
    upto = Window.partitionBy(key).orderBy(*order).rowsBetween(Window.unboundedPreceding, 0)
    found = both.select(
        F.col(_KIND), F.col(_T), F.col(_ROW), *[F.last(g, ignorenulls=True).over(upto).alias(g) for g in facts]
    ).where(F.col(_KIND) == 1)
    out = [F.col(f"{_ROW}.{c}").alias(c) for c in columns]
    for name, item in zip(facts, inputs, strict=True):
        found_at = F.col(f"{name}.{FEATURE_TS}")
        fresh = found_at.isNotNull()
        if item.plan.ttl_s is not None:
            fresh = fresh & (F.unix_micros(F.col(_T)) - F.unix_micros(found_at) <= F.lit(item.plan.ttl_s * 1_000_000))
        out += [F.when(fresh, F.col(f"{name}.{n}")).alias(n) for n in item.features]
        if item.time_column:
            out.append(F.when(fresh, found_at).alias(item.time_column))
    return found.select(*out)
