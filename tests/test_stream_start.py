"""Where a new streaming query over a Delta table starts (common.lake.stream_start): the table's first commit
when its history is append-only and whole, Delta's initial snapshot otherwise, and the choice kept for the
checkpoint's life."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from common.lake.stream_start import START_FILE, append_only_from_first_commit, stream_start_options


def _append(path, start: int, count: int = 3) -> None:
    write_deltalake(str(path), pa.table({"k": [f"k{i}" for i in range(start, start + count)]}), mode="append")


def _table(tmp_path, commits: int = 3):
    path = tmp_path / "bronze"
    for commit in range(commits):
        _append(path, commit * 3)
    return path


def test_an_append_only_table_starts_at_its_first_commit_and_the_choice_is_kept(tmp_path):
    table, checkpoint = _table(tmp_path), tmp_path / "checkpoint"
    assert stream_start_options(str(table), str(checkpoint)) == {"startingVersion": "0"}
    assert (checkpoint / START_FILE).read_text() == "0"
    DeltaTable(str(table)).delete("k = 'k1'")  # a remove after the start does not change a started query
    assert stream_start_options(str(table), str(checkpoint)) == {"startingVersion": "0"}


def test_a_table_that_removed_a_file_starts_on_the_snapshot(tmp_path):
    table, checkpoint = _table(tmp_path), tmp_path / "checkpoint"
    DeltaTable(str(table)).delete("k = 'k4'")  # like loom forget: the file is rewritten without the row
    assert not append_only_from_first_commit(table / "_delta_log")
    assert stream_start_options(str(table), str(checkpoint)) == {}
    assert not (checkpoint / START_FILE).exists()


def test_a_log_without_its_first_commits_starts_on_the_snapshot(tmp_path):
    table = _table(tmp_path)
    (table / "_delta_log" / f"{0:020d}.json").unlink()  # as the log's clean-up does after a checkpoint
    assert stream_start_options(str(table), str(tmp_path / "checkpoint")) == {}
    table = _table(tmp_path / "other")
    (table / "_delta_log" / f"{1:020d}.json").unlink()
    assert not append_only_from_first_commit(table / "_delta_log")


def test_a_query_that_started_on_the_snapshot_keeps_it(tmp_path):
    table, checkpoint = _table(tmp_path), tmp_path / "checkpoint"
    (checkpoint / "offsets").mkdir(parents=True)
    (checkpoint / "offsets" / "0").write_text("v1\n{}\n" + json.dumps({"isStartingVersion": True}))
    assert stream_start_options(str(table), str(checkpoint)) == {}
    assert not (checkpoint / START_FILE).exists()


def test_remote_tables_and_checkpoints_start_on_the_snapshot(tmp_path):
    table = _table(tmp_path)
    assert stream_start_options("s3://bucket/bronze", str(tmp_path / "c1")) == {}
    assert stream_start_options(str(table), "s3://bucket/checkpoints/c2") == {}


@pytest.mark.spark
def test_a_stream_from_the_first_commit_reads_every_row_once_across_a_restart(spark, tmp_path):
    """Three commits read one file a batch, a restart, one more commit: each row once, and the offsets name
    commits (not Delta's initial snapshot, which a restart would recompute)."""
    table, checkpoint, out = _table(tmp_path), tmp_path / "checkpoint", tmp_path / "out"

    def run() -> None:
        reader = spark.readStream.format("delta").options(**stream_start_options(str(table), str(checkpoint)))
        query = (
            reader.option("maxFilesPerTrigger", 1)
            .load(str(table))
            .writeStream.format("parquet")
            .option("checkpointLocation", str(checkpoint))
            .trigger(availableNow=True)
            .start(str(out))
        )
        query.awaitTermination()

    run()
    _append(table, 9)
    run()
    rows = sorted(row.k for row in spark.read.parquet(str(out)).collect())
    assert rows == sorted(f"k{i}" for i in range(12))
    offsets = sorted((p for p in (checkpoint / "offsets").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert len(offsets) == 4
    last = json.loads(offsets[-1].read_text().splitlines()[-1])
    assert last["isStartingVersion"] is False
