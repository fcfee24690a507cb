"""k-anonymous publication of a quasi-identifier: the ``aggregate`` policy.

A column such as ``zip`` is published only where its group holds at least ``k``
distinct entities (the ids of a ``kind: table`` source). With ``keep: [3, 2]``:

1. group the entities by the first 3 characters; every group with >= k
   distinct ids is published as its 3-character prefix;
2. the entities not yet published are grouped by the first 2 characters; every
   such group with >= k of them is published as its 2-character prefix;
3. what is left is suppressed: null.

A published value is therefore carried by >= k entities in the batch that
published it, and a later batch only adds entities to a value it publishes
itself with >= k, so every cell of ``GROUP BY column`` over bronze counts
either 0 or >= k distinct entities: never 1..k-1. Ingestion runs this per
micro-batch (batch ingestion of a table source is usually one batch), without
reading raw values back from bronze, which never holds them. A deletion
(``loom forget``) can shrink a cell below k; :func:`enforce_k_on_table`
suppresses such cells again.

Counting needs the whole batch, so the policy runs on static DataFrames only
(ingestion's ``foreachBatch``): two Spark jobs collect the number of entities
per value (one row per distinct value, never per entity) and the levels are
decided on the driver; when some entity has several values in the batch
(group sizes no longer add up) the levels are decided with distinct counts in
Spark instead. The
mapping (fine value -> published value) joins back as a small broadcast table,
not as literals in a condition.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from common.errors import PrivacyError
from common.spec.privacy import Aggregate
from common.spec.sources import Source

log = logging.getLogger("loom.privacy")

_ID = "__loom_k_id"
_FINE = "__loom_k_fine"
_GROUP = "__loom_k_group"
_PUBLISHED = "__loom_k_published"


@dataclass
class KAnonymityReport:
    """What the aggregate policy did to one column of one batch (counts only, never values)."""

    column: str
    k: int
    rows: int = 0
    entities: int = 0
    published: dict[str, int] = field(default_factory=dict)  # level ("keep 3" / "whole value") -> entities
    suppressed_entities: int = 0
    suppressed_rows: int = 0
    suppressed_groups: int = 0
    smallest_cell: int | None = None

    @property
    def merged_entities(self) -> int:
        """Entities published at a coarser level than the first one."""
        return sum(list(self.published.values())[1:])

    def render(self) -> str:
        levels = ", ".join(f"{n} at {level}" for level, n in self.published.items()) or "none published"
        smallest = f"; smallest published cell {self.smallest_cell}" if self.smallest_cell is not None else ""
        return (
            f"k-anonymity {self.column} (k={self.k}): {self.rows} rows of {self.entities} entities; {levels}; "
            f"suppressed {self.suppressed_entities} entities ({self.suppressed_rows} rows) "
            f"in {self.suppressed_groups} groups below k{smallest}"
        )


def check_aggregate(source: Source, source_name: str, column_name: str, policy: Aggregate) -> str:
    """The id column that counts entities for ``policy`` on ``column_name``; PrivacyError when it cannot apply."""
    where = f"sources.{source_name}.columns.{column_name}.pii"
    if source.columns[column_name].type != "string":
        raise PrivacyError(
            "the aggregate policy publishes prefixes of a string column",
            path=where,
            value=source.columns[column_name].type,
            fix="declare the column as type string, or use {method: generalize, rule: bucket|year}",
        )
    if source.kind != "table" or source.id is None:
        raise PrivacyError(
            "the aggregate policy counts distinct entities, so it needs a 'kind: table' source with an 'id'",
            path=where,
            value=policy.method,
            fix=f"give sources.{source_name} kind: table and id: <entity key column>, or use generalize",
        )
    if source.id == column_name:
        raise PrivacyError(
            "the aggregate policy cannot protect the id column it counts with",
            path=where,
            value=column_name,
            fix="protect another column, or use pseudonymize for the id",
        )
    return source.id


def _level_name(length: int | None) -> str:
    return "whole value" if length is None else f"keep {length}"


def _prefix(value: SparkColumn, length: int | None) -> SparkColumn:
    return value if length is None else F.substring(value, 1, length)


def k_anonymize(
    df: DataFrame, column: str, id_column: str, policy: Aggregate, *, where: str = "column"
) -> tuple[DataFrame, KAnonymityReport]:
    """``df`` with ``column`` replaced by its k-anonymous published value, and the report.

    ``id_column`` identifies entities (distinct ids are counted, so several
    versions of one entity count once). Runs Spark jobs on ``df`` (pass a
    persisted DataFrame when it is expensive). Nulls stay null.
    """
    if df.isStreaming:
        raise PrivacyError(
            "the aggregate policy counts groups over a whole batch and cannot run on a streaming DataFrame",
            path=f"{where}.pii",
            value=policy.method,
            fix="apply it per micro-batch (ingestion does, in foreachBatch), or use generalize for streams",
        )
    levels: list[int | None] = list(policy.keep) or [None]
    value = F.col(_quote(column)).cast("string")
    fine = _prefix(value, levels[0])
    entity = F.col(_quote(id_column)).cast("string")
    report = KAnonymityReport(column=where, k=policy.k)
    known = F.when(fine.isNotNull(), entity)
    totals = df.agg(F.count(value), F.countDistinct(entity), F.countDistinct(known)).first()
    report.rows, report.entities = int(totals[0]), int(totals[1])
    per_value = (
        df.where(fine.isNotNull() & entity.isNotNull())
        .groupBy(fine.alias(_FINE))
        .agg(F.countDistinct(entity).alias("n"), F.count("*").alias("rows"))
        .collect()
    )
    counts = {row[_FINE]: (int(row["n"]), int(row["rows"])) for row in per_value}
    if sum(n for n, _ in counts.values()) == int(totals[2]):
        # every entity has one value: group sizes add up, so the levels are decided on the driver
        mapping = _decide(counts, levels, policy.k, report)
    else:
        mapping = _decide_in_spark(df, entity, fine, levels, policy.k, report)
    local = _mapping_frame(df.sparkSession, mapping)
    out = df.withColumn(_FINE, fine).join(F.broadcast(local), on=_FINE, how="left")
    protected = F.when(F.col(_FINE).isNotNull(), F.col(_PUBLISHED))
    out = out.select(*[(protected.alias(name) if name == column else F.col(_quote(name))) for name in df.columns])
    log.info(report.render())
    return out, report


def _decide(
    counts: dict[str, tuple[int, int]], levels: list[int | None], k: int, report: KAnonymityReport
) -> list[tuple[str, str]]:
    """Fine value -> published value from per-value (entities, rows), when each entity has one value."""
    remaining = dict(counts)
    mapping: list[tuple[str, str]] = []
    smallest: list[int] = []
    for length in levels:
        groups: dict[str, list[str]] = {}
        for value in remaining:
            groups.setdefault(value if length is None else value[:length], []).append(value)
        published = 0
        for group, values in groups.items():
            size = sum(remaining[v][0] for v in values)
            if size >= k:
                mapping += [(v, group) for v in values]
                published += size
                smallest.append(size)
                for v in values:
                    del remaining[v]
        report.published[_level_name(length)] = published
    last = levels[-1]
    report.suppressed_entities = sum(n for n, _ in remaining.values())
    report.suppressed_rows = sum(rows for _, rows in remaining.values())
    report.suppressed_groups = len({v if last is None else v[:last] for v in remaining})
    report.smallest_cell = min(smallest) if smallest else None
    return mapping


def _decide_in_spark(
    df: DataFrame, entity: SparkColumn, fine: SparkColumn, levels: list[int | None], k: int, report: KAnonymityReport
) -> list[tuple[str, str]]:
    """The same decision with distinct counts in Spark: some entity has several values (it moved)."""
    pairs = (
        df.select(entity.alias(_ID), fine.alias(_FINE))
        .where(F.col(_FINE).isNotNull() & F.col(_ID).isNotNull())
        .distinct()
        .cache()
    )
    cached: list[DataFrame] = [pairs]
    try:
        pieces: list[DataFrame] = []
        remaining = pairs
        smallest: list[int] = []
        for length in levels:
            grouped = remaining.withColumn(_GROUP, _prefix(F.col(_FINE), length))
            passing = (
                grouped.groupBy(_GROUP)
                .agg(F.countDistinct(_ID).alias("n"))
                .where(F.col("n") >= k)
                .select(_GROUP, "n")
                .cache()
            )
            cached.append(passing)
            stats = passing.agg(F.sum("n"), F.min("n")).first()
            report.published[_level_name(length)] = int(stats[0] or 0)
            if stats[1] is not None:
                smallest.append(int(stats[1]))
            groups = passing.select(_GROUP)
            pieces.append(grouped.join(groups, _GROUP, "left_semi").select(_FINE, F.col(_GROUP).alias(_PUBLISHED)))
            remaining = grouped.join(groups, _GROUP, "left_anti").select(_ID, _FINE).cache()
            cached.append(remaining)
        left = remaining.groupBy(_prefix(F.col(_FINE), levels[-1])).agg(F.countDistinct(_ID).alias("n"))
        totals = left.agg(F.count("*"), F.sum("n")).first()
        report.suppressed_groups, report.suppressed_entities = int(totals[0]), int(totals[1] or 0)
        report.smallest_cell = min(smallest) if smallest else None
        mapping = pieces[0]
        for piece in pieces[1:]:
            mapping = mapping.unionByName(piece)
        rows = _collect_mapping(mapping.distinct())
        unpublished = df.where(fine.isNotNull()).join(
            F.broadcast(_mapping_frame(df.sparkSession, rows)), fine == F.col(_FINE), "left_anti"
        )
        report.suppressed_rows = unpublished.count()
    finally:
        for frame in cached:
            frame.unpersist()
    return rows


def _collect_mapping(mapping: DataFrame) -> list[tuple[str, str]]:
    """The collected (fine value, published value) pairs."""
    return [(row[_FINE], row[_PUBLISHED]) for row in mapping.collect()]


def _mapping_frame(spark: SparkSession, mapping: list[tuple[str, str | None]]) -> DataFrame:
    schema = StructType([StructField(_FINE, StringType(), False), StructField(_PUBLISHED, StringType(), True)])
    return spark.createDataFrame(mapping, schema)


def published_counts(df: DataFrame, column: str, id_column: str) -> DataFrame:
    """The published aggregate of ``column``: one row per non-null value with its count of distinct ids."""
    return (
        df.where(F.col(_quote(column)).isNotNull())
        .groupBy(F.col(_quote(column)).alias(column))
        .agg(F.countDistinct(F.col(_quote(id_column))).alias("entities"))
    )


def enforce_k_on_table(spark: SparkSession, path: str, column: str, id_column: str, k: int) -> int:
    """Suppress (set to null) values of ``column`` in the Delta table at ``path`` held by fewer than ``k`` ids.

    Used after deleting rows (a forgotten subject can shrink a cell below k);
    returns the number of rows suppressed. The values are joined, not spelled
    out in the UPDATE condition, so they do not reach the transaction log.
    """
    from delta.tables import DeltaTable

    table = spark.read.format("delta").load(path)
    small = published_counts(table, column, id_column).where(F.col("entities") < k).select(column)
    if small.isEmpty():
        return 0
    target = DeltaTable.forPath(spark, path)
    metrics = (
        target.alias("t")
        .merge(small.alias("s"), f"t.{_quote(column)} = s.{_quote(column)}")
        .whenMatchedUpdate(set={column: F.lit(None).cast("string")})
        .execute()
    )
    if metrics is not None and "num_updated_rows" in metrics.columns:
        return int(metrics.first()["num_updated_rows"])
    return -1


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"
