"""Where the feature operator's time goes: the same rows through four stateful queries, each timed alone.

The events group's prepared rows (entity key and one JSON text per event: what ``TileProcessor`` reads, from
:func:`common.features.streaming.tile_rows`) are read from bronze as a Delta stream and sent to a noop sink
through:

1. a native stateful aggregation (count and max of the text per entity, RocksDB): what the JVM alone costs;
2. Python ``transformWithState`` whose handler only iterates its rows and emits one row per entity: the cost of
   moving rows to Python and back (Arrow batches, a ``Row`` per event, one output batch per entity);
3. the same, plus one value-state ``get`` and ``update`` per entity: each is a round trip to the JVM's state
   server, so this adds the per-entity cost of state access;
4. the tile operator itself (``TileProcessor``: state access, the fold, the features at the newest event).

The gap from 1 to 2 and 3 is the price of a Python stateful operator on this machine, whatever it computes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyspark.sql import Row
from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle
from pyspark.sql.types import BinaryType, StructField, StructType

_STATE = StructType([StructField("seen", BinaryType())])


class _Iterate(StatefulProcessor):
    """Iterates an entity's rows and emits their count: rows to Python and back, nothing else."""

    def __init__(self, with_state: bool) -> None:
        self.with_state = with_state

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.seen = handle.getValueState("seen", _STATE)

    def handleInputRows(self, key: Any, rows: Iterator[Row], timerValues: Any) -> Iterator[Row]:
        count = sum(1 for _ in rows)
        if self.with_state:
            stored = self.seen.get()
            self.seen.update((bytes(stored[0]) if stored is not None else b"x",))
        yield Row(key=key[0], n=count)

    def close(self) -> None:
        pass


def _timed(query_builder: Any, checkpoint: Path) -> float:
    from common.runtime.state_store import rocksdb_state_store

    started = time.perf_counter()
    writer = query_builder.writeStream.format("noop").outputMode("update")
    with rocksdb_state_store(query_builder.sparkSession):
        query = writer.option("checkpointLocation", str(checkpoint)).trigger(availableNow=True).start()
    query.awaitTermination()
    if query.exception() is not None:
        raise query.exception()
    return time.perf_counter() - started


def operator_cost_rows(spark: Any, plan: Any, work: Any, home: Path, files: int | None) -> list[dict[str, Any]]:
    """One row per variant: events/s over every bronze event of the first events group's source."""
    from pyspark.sql import functions as F

    from common.features.streaming import ROW, entity_features, tile_rows
    from common.lake.paths import bronze_path

    group = next(g for g in plan.groups.values() if g.source_kind != "table")
    key = group.entity_key
    path = bronze_path(work, plan.usecase, group.source)
    events = spark.read.format("delta").load(path).count()

    def stream() -> Any:
        reader = spark.readStream.format("delta")
        return (reader.option("maxFilesPerTrigger", files) if files else reader).load(path)

    def python(with_state: bool) -> Any:
        return (
            tile_rows(spark, work, group, stream())
            .groupBy(key)
            .transformWithState(_Iterate(with_state), "key string, n long", "Update", "None")
        )

    variants = {
        "native aggregation (JVM)": tile_rows(spark, work, group, stream())
        .groupBy(key)
        .agg(F.count(F.lit(1)).alias("n"), F.max(ROW).alias("m")),
        "Python transformWithState, rows only": python(False),
        "Python transformWithState, rows + one state get/update per entity": python(True),
        "the tile operator (TileProcessor)": entity_features(spark, work, group, stream()),
    }
    rows = []
    for index, (name, query) in enumerate(variants.items()):
        seconds = _timed(query, home / "checkpoints" / f"bench_state_cost_{index}")
        rows.append(
            {
                "metric": f"diagnostic: {group.name} rows through {name}",
                "value": round(events / seconds, 1),
                "unit": "events/s",
                "note": f"{events:,} bronze events in {seconds:.1f}s, noop sink, {files or 'all'} files per trigger",
            }
        )
    return rows
