"""Delta Lake works for real here: write, read, time travel, MERGE, streaming read."""

from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import functions as F


def test_write_and_read_back(spark, tmp_table):
    spark.range(10).write.format("delta").save(tmp_table)
    assert spark.read.format("delta").load(tmp_table).count() == 10
    assert DeltaTable.isDeltaTable(spark, tmp_table)


def test_time_travel_reads_the_old_version(spark, tmp_table):
    spark.range(3).write.format("delta").save(tmp_table)
    spark.range(100, 105).write.format("delta").mode("overwrite").save(tmp_table)
    old = {r.id for r in spark.read.format("delta").option("versionAsOf", 0).load(tmp_table).collect()}
    new = {r.id for r in spark.read.format("delta").load(tmp_table).collect()}
    assert old == {0, 1, 2}
    assert new == {100, 101, 102, 103, 104}


def test_merge_updates_and_inserts(spark, tmp_table):
    spark.createDataFrame([(1, "a"), (2, "b")], "id long, v string").write.format("delta").save(tmp_table)
    updates = spark.createDataFrame([(2, "B"), (3, "C")], "id long, v string")
    (
        DeltaTable.forPath(spark, tmp_table)
        .alias("t")
        .merge(updates.alias("u"), "t.id = u.id")
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )
    rows = {r.id: r.v for r in spark.read.format("delta").load(tmp_table).collect()}
    assert rows == {1: "a", 2: "B", 3: "C"}
    operations = [r.operation for r in DeltaTable.forPath(spark, tmp_table).history().collect()]
    assert operations[0] == "MERGE"


def test_streaming_read_of_a_delta_table(spark, tmp_path):
    source = str(tmp_path / "source")
    sink = str(tmp_path / "sink")
    spark.range(5).write.format("delta").save(source)
    spark.range(5, 8).write.format("delta").mode("append").save(source)
    query = (
        spark.readStream.format("delta")
        .load(source)
        .withColumn("doubled", F.col("id") * 2)
        .writeStream.format("delta")
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(availableNow=True)
        .start(sink)
    )
    query.awaitTermination(120)
    assert query.exception() is None
    doubled = sorted(r.doubled for r in spark.read.format("delta").load(sink).collect())
    assert doubled == [i * 2 for i in range(8)]
