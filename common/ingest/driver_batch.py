"""A small ingestion micro-batch classified on the driver: one Spark job, then Arrow.

A micro-batch of a few thousand events cost about a dozen Spark jobs when every step ran in Spark: a count,
the bronze key read (a file listing job past 32 files), two broadcasts and a window for the duplicate check,
a count by check, and two ``limit(...).toArrow()`` collections for the delta-rs appends. On 2 cores each job
costs a few hundred milliseconds whatever its size, so a small batch cost 4-6 s.

Here the batch is parsed and checked (rules 1-4), its PII protected, in **one** Spark job that collects the
result to the driver as Arrow. Rule 5 (duplicates), the counts and the split into bronze and quarantine run
on that Arrow table, and the appends go from it through delta-rs (:func:`common.lake.append.append_rows_once`).
The bronze keys the duplicate check needs are read on the driver too
(:func:`common.lake.snapshot_read.current_arrow`), bounded by event time exactly as the Spark path bounds them.

The result is the Spark path's, row for row: the same row ids (assigned in the same projection), the same
order of "earlier" (keys, then the order columns, then ``_source_file`` and ``_row_id``, nulls first as in
Spark's ascending sort), the same bronze bound. Only batches known to be small come here (:func:`input_bytes`);
a larger one, a source with a k-anonymity policy (decided over the accepted rows in Spark) or tables off the
local file system take the Spark path of :class:`common.ingest.writer.BatchWriter`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pyspark.sql import DataFrame

from common.ingest.validation import (
    CHECK,
    FIRST_CHECK,
    FIRST_REASON,
    ORDER_COLUMNS,
    RAW,
    REASON,
    ROW_ID,
    SOURCE_FILE,
    dedup_columns,
    duplicate_reason,
)
from common.spec.sources import Source

# A batch whose input files hold at most this many bytes is classified on the driver. JSON events are
# ~150-250 bytes each, so this is ~60,000-100,000 events; the collected Arrow is a few times the input.
DRIVER_BYTES = 16 << 20
# Without known input files (a Kafka batch), at most this many records (then the Spark path).
DRIVER_ROWS = 50_000
# The event time before protection (a PII event time is generalized in bronze; the bound uses the true one).
DEDUP_TIME = "_loom_dedup_time"
INTERNAL = {*ORDER_COLUMNS, ROW_ID, RAW, FIRST_REASON, FIRST_CHECK, DEDUP_TIME, REASON, CHECK}


def input_bytes(batch: DataFrame) -> int | None:
    """Bytes of the micro-batch's input by Spark's own statistics, read on the driver (no job); None when unknown.

    A file-stream micro-batch reaches ``foreachBatch`` as a ``LogicalRDD`` that keeps the statistics of its
    plan: the sizes of the batch's files, as listed (``inputFiles()`` is empty there). A Kafka batch has no
    such estimate (Spark's default, ``spark.sql.defaultSizeInBytes``): unknown."""
    try:
        size = int(str(batch._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))
        unknown = int(batch.sparkSession.conf.get("spark.sql.defaultSizeInBytes", str(2**63 - 1)))
    except Exception:  # statistics are an optimizer internal: without them, the size is unknown
        return None
    return size if size < unknown else None


def collect_rows(frame: DataFrame, size: int | None) -> Any:
    """``frame`` as an Arrow table when the batch is small, in one Spark job; None when it is not.

    ``size``: the input's bytes (:func:`input_bytes`). When unknown, at most :data:`DRIVER_ROWS` rows are
    collected (``limit`` adds a shuffle to one partition: only where the size is unknown)."""
    if size is not None:
        return frame.toArrow() if size <= DRIVER_BYTES else None
    rows = frame.limit(DRIVER_ROWS + 1).toArrow()
    return rows if rows.num_rows <= DRIVER_ROWS else None


def oldest_candidate(rows: Any, source: Source) -> datetime | None:
    """The oldest event time among the records that passed rules 1-4 (the ones the duplicate check probes)."""
    import pyarrow.compute as pc

    if source.event_time is None or rows.num_rows == 0:
        return None
    times = pc.filter(rows[DEDUP_TIME], pc.is_null(rows[FIRST_REASON]))
    return pc.min(times).as_py() if len(times) else None


def classify_rows(rows: Any, source: Source, existing: Any) -> Any:
    """``rows`` (collected from :func:`~common.ingest.validation.named_checked`) with ``_reason`` and
    ``_check``: rule 5 on top of rules 1-4, as :func:`~common.ingest.validation.mark_duplicates` does.

    ``existing``: an Arrow table of bronze's duplicate-check keys (None: no check against bronze)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = dedup_columns(source)
    reason, check = rows[FIRST_REASON], rows[FIRST_CHECK]
    if keys:
        duplicate = pc.is_in(rows[ROW_ID], value_set=_duplicate_ids(rows, keys, existing))
        text = duplicate_reason(source)
        reason = pc.coalesce(reason, pc.if_else(duplicate, pa.scalar(text, reason.type), pa.scalar(None, reason.type)))
        check = pc.coalesce(check, pc.if_else(duplicate, pa.scalar(text, check.type), pa.scalar(None, check.type)))
    return rows.append_column(REASON, reason).append_column(CHECK, check)


def counts_by_check(classified: Any) -> tuple[int, dict[str, int]]:
    """(accepted, {check: quarantined}) of :func:`classify_rows`'s output."""
    import pyarrow.compute as pc

    checks = classified[CHECK]
    counts = {item["values"].as_py(): item["counts"].as_py() for item in pc.value_counts(checks.drop_null())}
    return checks.null_count, counts


def split_rows(classified: Any, ingested_at: datetime, ingested_at_name: str) -> tuple[Any, Any]:
    """(bronze rows, quarantine rows) of :func:`classify_rows`'s output, with their ingestion time.

    Bronze: every column that is not internal (the declared columns as protected, then ``_source_file``), in
    order, then ``ingested_at_name``; quarantine: ``raw``, ``reason``, ``source_file``, ``ingested_at``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    stamp = pa.timestamp("us", tz="UTC")
    accepted = classified.filter(pc.is_null(classified[REASON]))
    bronze = accepted.select([name for name in classified.column_names if name not in INTERNAL])
    bronze = bronze.append_column(ingested_at_name, pa.array([ingested_at] * bronze.num_rows, stamp))
    bad = classified.filter(pc.is_valid(classified[REASON]))
    quarantine = pa.table(
        {
            "raw": bad[RAW],
            "reason": bad[REASON],
            "source_file": bad[SOURCE_FILE],
            "ingested_at": pa.array([ingested_at] * bad.num_rows, stamp),
        }
    )
    return bronze, quarantine


def _duplicate_ids(rows: Any, keys: list[str], existing: Any) -> Any:
    """Row ids of the records whose key is in ``existing`` or on an earlier record of the batch."""
    import pyarrow as pa
    import pyarrow.compute as pc

    candidate = pc.is_null(rows[FIRST_REASON])
    for key in keys:
        candidate = pc.and_(candidate, pc.is_valid(rows[key]))
    order = [name for name in ORDER_COLUMNS if name in rows.column_names] + [SOURCE_FILE, ROW_ID]
    narrow = rows.select([*keys, *order]).filter(candidate)
    # Spark's ascending sort puts nulls first (a record without a file sorts before one with)
    ranked = narrow.take(
        pc.sort_indices(narrow, sort_keys=[(name, "ascending", "at_start") for name in (*keys, *order)])
    )
    ids = [pa.array([], pa.int64())]
    if ranked.num_rows > 1:
        same = None
        for key in keys:
            column = ranked[key]
            equal = pc.equal(column.slice(1), column.slice(0, ranked.num_rows - 1))
            same = equal if same is None else pc.and_(same, equal)
        ids.append(pc.filter(ranked[ROW_ID].slice(1), same).combine_chunks())
    if existing is not None and existing.num_rows:
        known = pa.table({key: pc.cast(existing[key], narrow.schema.field(key).type) for key in keys})
        probe = narrow.select([*keys, ROW_ID])
        ids.append(probe.join(known, keys=keys, join_type="left semi")[ROW_ID].combine_chunks())
    return pa.concat_arrays([array.cast(pa.int64()) for array in ids])
