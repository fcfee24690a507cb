"""A model's label rows from its label source's bronze table: one per label ``id`` when the source has one.

Labels can be corrected. A label source with ``id:`` keeps, per id, only its **latest ingested** row
(``_ingested_at``; then the newest ``event_time``, then the later landing file): a corrected
outcome file replaces the label instead of adding a second one. A correction that sets the label
to null withdraws it. Training sets (common.models.training_set) and the evaluation
(common.monitoring.sources) read labels through :func:`label_rows`, so both see the same labels.

Ingestion keeps the corrections when the source's duplicate key lets them in: a ``kind: table``
label source keys its rows by ``(id, event_time)``, so a correction with a newer ``event_time``
(e.g. ``updated_at``) is a new version (docs/models.md, "Corrected labels").
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from common.spec.sources import Source

INGESTED_AT = "_ingested_at"  # common.ingest.writer.INGESTED_AT
SOURCE_FILE = "_source_file"
_RANK = "_label_rank"


def latest_per_id(bronze: DataFrame, source: Source | None) -> DataFrame:
    """``bronze`` with one row per ``source.id`` (the latest ingested); unchanged when the source has no id."""
    if source is None or source.id is None:
        return bronze
    order: list[Column] = []
    for column in (INGESTED_AT, source.event_time, SOURCE_FILE):
        if column is not None and column in bronze.columns:
            order.append(F.col(column).desc_nulls_last())
    window = Window.partitionBy(F.col(source.id)).orderBy(*order)
    # rows without an id cannot be corrected: each stays a label of its own
    ranked = bronze.withColumn(_RANK, F.when(F.col(source.id).isNull(), 1).otherwise(F.row_number().over(window)))
    return ranked.where(F.col(_RANK) == 1).drop(_RANK)


def label_rows(
    bronze: DataFrame,
    source: Source | None,
    *,
    key: str,
    time: str,
    expr: str,
    label: str,
    time_alias: str | None = None,
    extra: dict[str, str] | None = None,
) -> DataFrame:
    """The label rows: ``key``, ``time`` (as timestamp, named ``time_alias``), the 0/1 ``label`` from ``expr``,
    and ``extra`` columns ({output name: bronze column}); rows without a label or a time are left out.
    ``source`` is the label source's spec (None: every row is a label)."""
    rows = latest_per_id(bronze, source)
    alias = time_alias or time
    return rows.select(
        F.col(key),
        F.col(time).cast("timestamp").alias(alias),
        F.expr(expr).cast("int").alias(label),
        *[F.col(column).alias(name) for name, column in (extra or {}).items()],
    ).where(F.col(label).isNotNull() & F.col(alias).isNotNull())
