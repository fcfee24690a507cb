"""Ingestion on real Delta tables: quarantine reasons, reconciliation, exactly-once, streaming, privacy."""

from __future__ import annotations

import csv
import importlib
import json
import os
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from common.errors import DataError, PrivacyError
from common.generate import GenerateOptions, generate_landing, read_malformed_log
from common.ingest import (
    IngestReport,
    driver_batch,
    ingest_source,
    start_ingest_stream,
    stop_gracefully,
    validate_records,
)
from common.ingest.redaction import REDACTED, UNPARSABLE_CSV_NOTE
from common.ingest.validation import SOURCE_FILE, string_schema
from common.ingest.writer import BatchWriter, ensure_tables
from common.lake.paths import IngestLocations
from common.settings import Paths
from common.spec import load_usecase
from common.spec.sources import Source
from jobs.runner import main_for

SPEC = load_usecase("churn")
EVENTS = SPEC.sources["events"]
CUSTOMERS = SPEC.sources["customers"]


def _event(event_id: str, **changes) -> dict:
    record = {
        "event_id": event_id,
        "customer_id": "C00000001",
        "event_type": "payment",
        "ts": "2026-01-01T10:00:00Z",
        "amount": 49.99,
        "channel": "app",
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def _write_events(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}"
    temporary.write_text("\n".join(lines) + "\n")
    os.replace(temporary, folder / name)


def _table(spark, path: str):
    return spark.read.format("delta").load(path)


def _expected_reason(entry: dict, source: Source) -> str:
    kind, column, value = entry["kind"], entry["column"], entry["value"]
    if kind == "malformed_json":
        return "malformed JSON"
    if kind == "malformed_csv":
        return "malformed CSV record"
    if kind == "missing":
        return f"missing required column {column}"
    if kind == "wrong_type":
        shown = REDACTED if source.columns[column].is_pii else value
        return f"column {column}: {shown} is not a {source.columns[column].type}"
    if kind == "not_allowed":
        return f"column {column}: value {value} not in allowed values"
    return "duplicate event_id" if source.kind == "events" else "duplicate (customer_id, updated_at)"


# --- ingesting generated files --------------------------------------------------------


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory):
    """50 customers over 2 days, 8% malformed, ingested once (availableNow)."""
    work = Paths(tmp_path_factory.mktemp("ingest-home"))
    summary = generate_landing(SPEC, work, GenerateOptions(customers=50, days=2, seed=21, malformed_rate=0.08))
    # the three sources run as concurrent availableNow queries, as `loom stream` runs them
    reports = {name: IngestReport(name) for name in SPEC.sources}
    queries = [start_ingest_stream(spark, SPEC, name, work, mode="batch", report=reports[name]) for name in reports]
    for query in queries:
        query.awaitTermination()
        assert query.exception() is None
    return work, summary, reports


def test_every_injected_malformed_record_is_quarantined_with_its_reason(spark, ingested):
    work, summary, _ = ingested
    log = read_malformed_log(summary.out)
    assert {e["kind"] for e in log if e["source"] == "events"} == {
        "malformed_json",
        "wrong_type",
        "missing",
        "not_allowed",
        "duplicate",
    }
    for name in ("events", "customers"):
        source = SPEC.sources[name]
        expected = Counter((e["file"], _expected_reason(e, source)) for e in log if e["source"] == name)
        rows = _table(spark, work.table("churn", "quarantine", name)).collect()
        actual = Counter((Path(r.source_file).name, r.reason) for r in rows)
        assert actual == expected, name
    assert _table(spark, work.table("churn", "quarantine", "outcomes")).count() == 0


def test_counts_reconcile_with_the_files_and_the_tables(spark, ingested):
    work, summary, reports = ingested
    for name, report in reports.items():
        assert report.read == summary.rows[name]
        assert report.read == report.accepted + report.quarantined
        assert report.quarantined == sum(summary.malformed.get(name, {}).values())
        assert _table(spark, work.table("churn", "bronze", name)).count() == report.accepted
        assert _table(spark, work.table("churn", "quarantine", name)).count() == report.quarantined


def test_bronze_has_types_and_lineage_and_every_customer_version(spark, ingested):
    work, _, _ = ingested
    events = _table(spark, work.table("churn", "bronze", "events"))
    types = dict(events.dtypes)
    assert types["ts"] == "timestamp" and types["amount"] == "double"
    assert types["_source_file"] == "string" and types["_ingested_at"] == "timestamp"
    assert events.where(F.col("_source_file").isNull() | F.col("_ingested_at").isNull()).count() == 0
    assert events.select("event_id").distinct().count() == events.count()
    customers = _table(spark, work.table("churn", "bronze", "customers"))
    versions = customers.groupBy("customer_id").count()
    assert versions.count() == 50
    assert versions.where("count > 1").count() > 0  # plan changes append a new version


def test_bronze_and_quarantine_hold_no_raw_pii(spark, ingested):
    work, summary, _ = ingested
    raw_values: set[str] = set()
    for path in (summary.out / "customers").glob("*.csv"):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                for column in ("full_name", "email", "phone", "street_address", "zip", "account_number"):
                    if row.get(column):
                        raw_values.add(row[column])
                if row.get("date_of_birth") and not row["date_of_birth"].endswith("-01-01"):
                    raw_values.add(row["date_of_birth"])
    assert len(raw_values) > 200
    bronze = _table(spark, work.table("churn", "bronze", "customers"))
    assert "full_name" not in bronze.columns and "street_address" not in bronze.columns
    stored = {str(value) for row in bronze.collect() for value in row}
    assert not raw_values & stored
    quarantine = " ".join(r.raw for r in _table(spark, work.table("churn", "quarantine", "customers")).collect())
    assert quarantine and not any(value in quarantine for value in raw_values)


def test_running_again_on_the_same_files_adds_nothing(spark, ingested):
    work, _, _ = ingested
    before = {
        (name, layer): _table(spark, work.table("churn", layer, name)).count()
        for name in SPEC.sources
        for layer in ("bronze", "quarantine")
    }
    reports = [ingest_source(spark, SPEC, name, work) for name in SPEC.sources]
    assert [(r.read, r.accepted, r.quarantined) for r in reports] == [(0, 0, 0)] * 3
    after = {key: _table(spark, work.table("churn", key[1], key[0])).count() for key in before}
    assert after == before


# --- hand-written files ---------------------------------------------------------------


def test_a_replayed_event_in_a_new_file_is_quarantined_as_duplicate(spark, tmp_path):
    work = Paths(tmp_path)
    folder = work.landing / "churn" / "events"
    _write_events(folder, "a.json", [json.dumps(_event("E1")), json.dumps(_event("E2"))])
    first = ingest_source(spark, SPEC, "events", work)
    assert (first.accepted, first.quarantined) == (2, 0)

    # a replay of E2, a new event E3 twice (the first copy wins) and E4
    lines = [json.dumps(_event("E2")), json.dumps(_event("E3")), json.dumps(_event("E3", amount=1.0))]
    _write_events(folder, "b.json", [*lines, json.dumps(_event("E4"))])
    second = ingest_source(spark, SPEC, "events", work)
    assert (second.read, second.accepted, second.quarantined) == (4, 2, 2)
    assert second.by_reason == Counter({"duplicate event_id": 2})
    bronze = _table(spark, work.table("churn", "bronze", "events"))
    assert sorted(r.event_id for r in bronze.collect()) == ["E1", "E2", "E3", "E4"]
    assert bronze.where("event_id = 'E3'").first().amount == 49.99
    quarantined = _table(spark, work.table("churn", "quarantine", "events")).collect()
    assert sorted(json.loads(r.raw)["event_id"] for r in quarantined) == ["E2", "E3"]


def test_a_csv_file_with_other_columns_is_a_data_error(spark, tmp_path):
    folder = tmp_path / "landing" / "churn" / "outcomes"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("label_ts,customer_id,churned\n2026-01-01T00:00:00Z,C1,0\n")
    with pytest.raises(DataError, match="label_ts, customer_id, churned"):
        ingest_source(spark, SPEC, "outcomes", Paths(tmp_path))
    assert _table(spark, Paths(tmp_path).table("churn", "bronze", "outcomes")).count() == 0


@pytest.mark.parametrize("path", ["driver", "spark"])
def test_a_retried_micro_batch_adds_nothing(spark, tmp_path, monkeypatch, path):
    """Both ways of writing a batch: classified on the driver (small batches) and in Spark (large ones)."""
    if path == "spark":
        monkeypatch.setattr(driver_batch, "DRIVER_ROWS", 0)  # every batch is too large for the driver
    work = Paths(tmp_path)
    locations = IngestLocations.of(work, "churn", "events", EVENTS)
    ensure_tables(spark, EVENTS, "events", locations)
    writer = BatchWriter(EVENTS, "events", locations, IngestReport("events"))
    writer.bind("query-under-test")
    lines = [json.dumps(_event("E1")), json.dumps(_event("E2")), "{broken"]
    batch = spark.createDataFrame([(line, "f.json") for line in lines], f"value string, {SOURCE_FILE} string")
    writer(batch, 0)
    writer(batch, 0)  # the same batch again, as after a crash before the checkpoint commit
    assert _table(spark, locations.bronze).count() == 2
    assert _table(spark, locations.quarantine).count() == 1
    writer(batch, 1)  # a new batch with the same records: now duplicates of bronze
    assert _table(spark, locations.bronze).count() == 2
    assert Counter(r.reason for r in _table(spark, locations.quarantine).collect()) == Counter(
        {"malformed JSON": 2, "duplicate event_id": 2}
    )


def test_a_batch_retried_after_its_bronze_commit_adds_nothing_to_quarantine(spark, tmp_path):
    """A batch with nothing to quarantine, retried after its bronze append committed (a crash before the
    checkpoint commit): the retry finds its own records in bronze, and must not quarantine them as duplicates."""
    work = Paths(tmp_path)
    locations = IngestLocations.of(work, "churn", "events", EVENTS)
    ensure_tables(spark, EVENTS, "events", locations)
    writer = BatchWriter(EVENTS, "events", locations, IngestReport("events"))
    writer.bind("query-under-test")
    lines = [json.dumps(_event("E1")), json.dumps(_event("E2"))]
    batch = spark.createDataFrame([(line, "f.json") for line in lines], f"value string, {SOURCE_FILE} string")
    writer(batch, 0)
    writer(batch, 0)  # the same batch again, as after a crash between the bronze and the checkpoint commits
    assert _table(spark, locations.bronze).count() == 2
    assert _table(spark, locations.quarantine).count() == 0


def test_stream_mode_picks_up_new_files_and_survives_bad_records(spark, tmp_path):
    work = Paths(tmp_path)
    folder = work.landing / "churn" / "events"
    _write_events(folder, "1.json", [json.dumps(_event("E1"))])
    report = IngestReport("events")
    query = start_ingest_stream(spark, SPEC, "events", work, trigger_interval="1 second", report=report)
    try:
        query.processAllAvailable()
        assert (report.read, report.accepted) == (1, 1)
        _write_events(
            folder, "2.json", ["not json", json.dumps(_event("E2", ts="yesterday")), json.dumps(_event("E3"))]
        )
        query.processAllAvailable()
        assert query.isActive
        assert (report.read, report.accepted, report.quarantined) == (4, 2, 2)
        _write_events(folder, "3.json", [json.dumps(_event("E4"))])
        query.processAllAvailable()
        assert report.accepted == 3
    finally:
        stop_gracefully(query)
    assert not query.isActive
    assert query.exception() is None
    assert _table(spark, work.table("churn", "bronze", "events")).count() == 3


# --- validate_records on a batch DataFrame ------------------------------------------------


def _event_id_or_raw(raw: str) -> str:
    try:
        return json.loads(raw)["event_id"]
    except ValueError:
        return raw


def _json_batch(spark, lines: list[str]):
    return spark.createDataFrame([(line,) for line in lines], "value string")


def test_validate_records_gives_one_reason_per_bad_record(spark):
    lines = [
        json.dumps(_event("E1", unknown_key="ignored")),
        '{"event_id": "E2", "customer_id": ',
        "{'event_id': 'E3'}",
        json.dumps(_event("E4", amount="abc")),
        json.dumps(_event("E5", ts="yesterday")),
        json.dumps(_event("E6", ts="2026")),
        json.dumps(_event("E7", customer_id=None)),
        json.dumps(_event("E8", customer_id="  ")),
        json.dumps(_event("E9", event_type="teleport")),
        json.dumps(_event("E10", event_type="teleport", ts="yesterday")),
        json.dumps(_event("E11", amount=12)),
        json.dumps(_event("E12", ts="2026-01-01T11:00:00+02:00", channel=None)),
        json.dumps(_event("E13"))[:-1] + ', "customer_id": 7}',  # a key twice: which value counts is ambiguous
    ]
    accepted, quarantined = validate_records(_json_batch(spark, lines), EVENTS)
    reasons = {_event_id_or_raw(r.raw): r.reason for r in quarantined.collect()}
    assert reasons == {
        '{"event_id": "E2", "customer_id": ': "malformed JSON",
        "{'event_id': 'E3'}": "malformed JSON",
        "E4": "column amount: abc is not a double",
        "E5": "column ts: yesterday is not a timestamp",
        "E6": "column ts: 2026 is not a timestamp",
        "E7": "missing required column customer_id",
        "E8": "missing required column customer_id",
        "E9": "column event_type: value teleport not in allowed values",
        "E10": "column ts: yesterday is not a timestamp",
        "E13": "malformed JSON",
    }
    rows = {r.event_id: r for r in accepted.collect()}
    assert sorted(rows) == ["E1", "E11", "E12"]
    assert rows["E11"].amount == 12.0
    assert rows["E12"].channel is None
    e12 = accepted.where("event_id = 'E12'").select(F.date_format("ts", "yyyy-MM-dd HH:mm:ss").alias("ts")).first()
    assert e12.ts == "2026-01-01 09:00:00"  # the offset is applied; the session time zone is UTC
    assert accepted.columns == [*EVENTS.columns, SOURCE_FILE]


def test_validate_records_checks_duplicates_against_existing_keys_and_within_the_batch(spark):
    batch = _json_batch(spark, [json.dumps(_event(i)) for i in ("E1", "E2", "E2", "E3", "E3")])
    existing = spark.createDataFrame([("E1",), ("E9",)], "event_id string")
    accepted, quarantined = validate_records(batch, EVENTS, existing_keys=existing)
    assert sorted(r.event_id for r in accepted.collect()) == ["E2", "E3"]
    assert sorted(r.reason for r in quarantined.collect()) == ["duplicate event_id"] * 3


def test_validate_records_keeps_pii_out_of_reasons_and_raw_text(spark):
    schema = string_schema(CUSTOMERS, corrupt_column=True)
    good = ["C1", "Ann Lee", "ann@example.com", "+1-555", "1 Oak St", "94107", "1990-05-17", "AC1"]
    rows = [
        (*good, "residential", "basic", "29.99", "2020-01-01", "2026-01-01T00:00:00Z", None),
        (*good[:6], "17/05/1990", "AC1", "residential", "basic", "29.99", "2020-01-01", "2026-01-02T00:00:00Z", None),
        (*[None] * 13, "C2,Bob Stone,bob@example.com"),
    ]
    batch = spark.createDataFrame(rows, schema)
    accepted, quarantined = validate_records(batch, CUSTOMERS)
    assert accepted.count() == 1
    stored = {r.reason: r.raw for r in quarantined.collect()}
    assert set(stored) == {"column date_of_birth: <redacted> is not a date", "malformed CSV record"}
    assert stored["malformed CSV record"] == UNPARSABLE_CSV_NOTE
    record = json.loads(stored["column date_of_birth: <redacted> is not a date"])
    assert record["customer_id"] == "C1" and record["segment"] == "residential"
    assert {record[c] for c in ("full_name", "email", "phone", "date_of_birth")} == {REDACTED}


def test_validate_records_checks_typed_parquet_columns_the_same_way(spark):
    outcomes = SPEC.sources["outcomes"].model_copy(update={"format": "parquet"})
    at = datetime(2026, 1, 1, 12, 0)
    batch = spark.createDataFrame(
        [("C1", at, 1), ("C2", at, 2), (None, at, 0)], "customer_id string, label_ts timestamp, churned int"
    )
    accepted, quarantined = validate_records(batch, outcomes)
    assert [(r.customer_id, r.label_ts, r.churned) for r in accepted.collect()] == [("C1", at, 1)]
    assert sorted(r.reason for r in quarantined.collect()) == [
        "column churned: value 2 not in allowed values",
        "missing required column customer_id",
    ]


def test_quarantined_json_of_a_pii_source_is_redacted_even_when_broken(spark):
    source = EVENTS.model_copy(update={"columns": {**EVENTS.columns, "email": CUSTOMERS.columns["email"]}, "id": None})
    lines = [
        json.dumps(_event("E1", email="ann@example.com", amount="abc", note={"x": 1})),
        '{"event_id": "E2", "email": "bob@example.com", "customer_id": "C',
        '{"event_id": "E3", "EMAIL": "cut@exam',
    ]
    _, quarantined = validate_records(_json_batch(spark, lines), source)
    raws = [r.raw for r in quarantined.collect()]
    assert len(raws) == 3
    assert not any("@" in raw for raw in raws)
    assert all(REDACTED in raw for raw in raws)
    assert json.loads(raws[0])["note"] == '{"x":1}'  # unknown keys are kept in quarantine


def test_a_pii_id_column_is_refused(spark, tmp_path):
    source = EVENTS.model_copy(
        update={
            "columns": {**EVENTS.columns, "event_id": CUSTOMERS.columns["phone"].model_copy(update={"required": True})}
        }
    )
    spec = SPEC.model_copy(update={"sources": {**SPEC.sources, "events": source}})
    with pytest.raises(PrivacyError, match="event_id"):
        start_ingest_stream(spark, spec, "events", Paths(tmp_path))


def test_a_report_that_does_not_reconcile_is_a_data_error():
    report = IngestReport("events")
    report.add_batch(10, 7, {"malformed JSON": 2})
    with pytest.raises(DataError, match="does not reconcile"):
        report.check()


# --- the jobs ------------------------------------------------------------------------------


def test_generate_and_ingest_jobs(spark, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOOM_HOME", str(tmp_path))
    generate_job, ingest_job = importlib.import_module("jobs.generate"), importlib.import_module("jobs.ingest")
    # build_session finds the shared session already active and reuses it
    code = main_for("generate", generate_job, ["--usecase", "churn", "--customers", "20", "--days", "1"])
    assert code == 0
    assert "events" in capsys.readouterr().out
    code = main_for("ingest", ingest_job, ["--usecase", "churn", "--source", "outcomes"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "outcomes" in out and "20" in out
    assert _table(spark, Paths(tmp_path).table("churn", "bronze", "outcomes")).count() == 20
    code = main_for("ingest", ingest_job, ["--usecase", "churn", "--source", "nope"])
    assert code == 2
    assert "not a source" in capsys.readouterr().err
