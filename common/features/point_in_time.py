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

Each partition is first radix-sorted by one long, (entity hash, whole seconds): :func:`_radix_order`.
Without it, the window's sort compared rows of one entity by reading them (its sort prefix is the key
alone), and that comparison was the largest item of a profile (Java Flight Recorder at 1M labels × 10.1M
history rows: 21% of the samples in the key's byte comparison, 25% in the sort). With it, the stage of
the sorts and the window used 15.6 CPU s instead of 19.4 there (Spark's event log, one run each). Twice
the session's shuffle partitions: each task holds both sorts' rows at once, and at 4 they spilled 407 MB.

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

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from common.compile.plan import FEATURE_TS, GroupPlan
from common.errors import CompileError, DataError
from common.features.offline import WRITE_ORDER, with_write_order

_T = "_pit_t"
_ROW = "_pit_row"  # a query row's columns (null for history rows)
# Breaks equal times: history rows in write order (a null write order, the oldest, first), then query rows,
# so that a query sees every history row of its own instant and the latest written of them wins.
_W = "_pit_w"
_OLDEST_WRITE, _QUERY = -(2**63), 2**63 - 1


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
        F.lit(_QUERY).alias(_W),
        F.struct(*[F.col(c) for c in columns]).alias(_ROW),
    )
    null_row = F.lit(None).cast(queries.schema[_ROW].dataType)
    facts = {
        f"_g{i}": with_write_order(item.history).select(
            F.col(item.plan.entity_key).alias(key),
            F.col(FEATURE_TS).alias(_T),
            F.coalesce(F.col(WRITE_ORDER), F.lit(_OLDEST_WRITE)).alias(_W),
            F.struct(F.col(FEATURE_TS), *[F.col(n).cast("double").alias(n) for n in item.features]).alias(f"_g{i}"),
        )
        for i, item in enumerate(inputs)
    }
    types = {name: df.schema[name].dataType for name, df in facts.items()}
    both = queries.select("*", *[F.lit(None).cast(types[g]).alias(g) for g in facts])
    for name, df in facts.items():
        others = [F.lit(None).cast(types[g]).alias(g) for g in facts if g != name]
        both = both.unionByName(df.select(key, _T, _W, null_row.alias(_ROW), name, *others))
    entity = F.hash(F.col(key))
    # Twice the session's shuffle partitions: each task holds both sorts' rows at once. Databricks may say
    # "auto" instead of a number: then Spark's own choice.
    partitions = rows.sparkSession.conf.get("spark.sql.shuffle.partitions") or ""
    spread = [2 * int(partitions)] if partitions.isdigit() else []
    presorted = both.repartition(*spread, F.col(key)).sortWithinPartitions(_radix_order(entity))
    upto = Window.partitionBy(entity, F.col(key)).orderBy(_T, _W).rowsBetween(Window.unboundedPreceding, 0)
    found = presorted.select(
        F.col(_T), F.col(_ROW), *[F.last(g, ignorenulls=True).over(upto).alias(g) for g in facts]
    ).where(F.col(_ROW).isNotNull())
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


def _radix_order(entity: Column) -> Column:
    """One long per row, (entity hash, time in whole seconds), for a radix sort of each partition.

    Spark sorts a single long from its prefix alone, by radix, without reading the rows; the window's own
    sort (by entity hash, key, time, write order) then meets rows already in its order but for ties
    within a second and hash collisions, and costs a pass. Only speed depends on it: the window's sort
    alone decides the order, so times outside 1970-2106 (whose seconds the low 32 bits wrap) are still
    exact. Bit operations, not arithmetic: they cannot overflow, which ANSI mode would raise.
    """
    seconds = F.unix_seconds(F.col(_T)).bitwiseAND(F.lit(2**32 - 1))
    return F.shiftleft(entity.cast("long"), 32).bitwiseOR(seconds)
