"""The stream's cached join rows (common.features.join_cache): a streaming query joins the cached rows, and a
commit to the table (here by delta-rs, which Spark's cache does not hear of) reaches the next micro-batch."""

from __future__ import annotations

from datetime import UTC, datetime

from common.features.join_cache import current_rows, delta_version, refreshing
from common.features.prepare import latest_rows
from common.lake.append import append_once

SCHEMA = "customer_id string, segment string, updated_at timestamp"
DAY = datetime(2026, 1, 14, tzinfo=UTC)


def test_each_micro_batch_joins_the_rows_current_after_the_batch_before(spark, tmp_path):
    table, events = tmp_path / "customers", tmp_path / "events"
    assert delta_version(table) is None
    append_once(spark.createDataFrame([("C1", "residential", DAY)], SCHEMA), str(table), "test", 0)  # creates it
    for batch in range(3):
        spark.createDataFrame([("C1", batch)], "customer_id string, n int").write.format("delta").mode("append").save(
            str(events)
        )

    def build():
        rows = latest_rows(spark.read.format("delta").load(str(table)), "customer_id", "updated_at")
        return rows.select("customer_id", "segment")

    rows = current_rows(spark, str(table), build, "customer_id", "updated_at", ["segment"])
    assert current_rows(spark, str(table), build, "customer_id", "updated_at", ["segment"]) is rows
    seen: dict[int, str] = {}

    def handle(batch, batch_id: int) -> None:
        seen[batch_id] = batch.collect()[0]["segment"]
        if batch_id == 0:  # a newer row of C1, by delta-rs: Spark's cache manager is not told
            newer = spark.createDataFrame([("C1", "business", DAY.replace(hour=5))], SCHEMA)
            append_once(newer, str(table), "test", 1)

    stream = spark.readStream.format("delta").option("maxFilesPerTrigger", 1).load(str(events))
    query = (
        stream.join(rows, "customer_id", "left")
        .writeStream.option("checkpointLocation", str(tmp_path / "checkpoint"))
        .foreachBatch(refreshing(spark, handle))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    assert delta_version(table)[0] == 1
    assert seen == {0: "residential", 1: "business", 2: "business"}
