"""The churn generator: deterministic, realistic dirt (late, malformed, replayed), and a learnable signal."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.generate import GenerateOptions, generate_landing, read_malformed_log
from common.settings import Paths
from common.spec import load_usecase
from tests.spec_helpers import mutated_churn

OPTIONS = GenerateOptions(customers=50, days=3, seed=11, malformed_rate=0.05, late_rate=0.1)


def _generate(root: Path, options: GenerateOptions = OPTIONS):
    return generate_landing("churn", Paths(root), options)


def _landing(root: Path) -> Path:
    return root / "landing" / "churn"


def _files(root: Path) -> dict[str, bytes]:
    landing = _landing(root)
    # _generated.json names the output folder; the data files and the malformed log must match exactly
    files = sorted(p for p in landing.rglob("*") if p.is_file() and p.name != "_generated.json")
    return {str(p.relative_to(landing)): p.read_bytes() for p in files}


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _valid_events(root: Path) -> list[dict]:
    """Events that parse and carry what the signal needs (malformed ones are skipped)."""
    events: dict[str, dict] = {}
    for path in sorted((_landing(root) / "events").glob("*.json")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                _time(record["ts"])
            except (ValueError, KeyError):
                continue
            if "customer_id" in record and record.get("event_type") in ("outage_report", "support_call", "payment"):
                events[record["event_id"]] = record
    return list(events.values())


def _outcomes(root: Path) -> dict[str, tuple[float, int]]:
    labels = {}
    for path in sorted((_landing(root) / "outcomes").glob("*.csv")):
        with path.open() as handle:
            for row in csv.DictReader(handle):
                labels[row["customer_id"]] = (_time(row["label_ts"]), int(row["churned"]))
    return labels


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    return root, _generate(root)


def test_same_seed_gives_identical_files_and_another_seed_does_not(generated, tmp_path):
    root, _ = generated
    _generate(tmp_path / "again")
    _generate(tmp_path / "other", GenerateOptions(customers=50, days=3, seed=12, malformed_rate=0.05, late_rate=0.1))
    assert _files(tmp_path / "again") == _files(root)
    assert _files(tmp_path / "other") != _files(root)


def test_writes_several_files_per_source_and_a_matching_summary(generated):
    root, summary = generated
    landing = _landing(root)
    for source in ("customers", "events", "outcomes"):
        files = sorted((landing / source).iterdir())
        assert len(files) >= 2, source
        assert summary.files[source] == len(files)
        header = 1 if source != "events" else 0
        assert summary.rows[source] == sum(len(p.read_text().splitlines()) - header for p in files)
    log = read_malformed_log(landing)
    assert sum(sum(kinds.values()) for kinds in summary.malformed.values()) == len(log) > 0
    assert json.loads((landing / "_generated.json").read_text())["rows"] == summary.rows


def test_customers_csv_has_the_declared_columns_and_pii(generated):
    root, _ = generated
    spec = load_usecase("churn")
    snapshot = sorted((_landing(root) / "customers").glob("*.csv"))[0]
    with snapshot.open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == list(spec.sources["customers"].columns)
        rows = [row for row in reader if row["customer_id"]]
    assert len({row["customer_id"] for row in rows}) == 50
    assert all("@" in row["email"] for row in rows if row["email"])


def test_some_events_arrive_late_and_out_of_order(generated):
    root, summary = generated
    injected = {
        e["id"] for e in read_malformed_log(_landing(root)) if e["source"] == "events" and e["kind"] != "duplicate"
    }
    seen: set[str] = set()
    late = out_of_order = 0
    for path in sorted((_landing(root) / "events").glob("*.json")):
        file_hour = datetime.strptime(path.name.split("-")[1], "%Y%m%dT%H%M").replace(tzinfo=UTC).timestamp()
        previous = None
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                event_id, ts = record["event_id"], _time(record["ts"])
            except (ValueError, KeyError):
                continue
            if event_id in injected or event_id in seen:
                continue
            seen.add(event_id)
            late += ts < file_hour
            out_of_order += previous is not None and ts < previous
            previous = ts
    assert late > 0 and out_of_order > 0
    assert summary.facts["late_events"] == late


def test_every_kind_of_malformed_record_is_injected(generated):
    root, _ = generated
    kinds = defaultdict(set)
    for entry in read_malformed_log(_landing(root)):
        kinds[entry["source"]].add(entry["kind"])
    assert kinds["events"] == {"malformed_json", "wrong_type", "missing", "not_allowed", "duplicate"}
    assert kinds["customers"] <= {"malformed_csv", "wrong_type", "missing", "not_allowed", "duplicate"}
    assert kinds["customers"]


def test_outage_followed_by_a_call_raises_churn(tmp_path):
    _generate(tmp_path, GenerateOptions(customers=300, days=3, seed=5, malformed_rate=0.0))
    labels = _outcomes(tmp_path)
    by_customer: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for event in _valid_events(tmp_path):
        by_customer[event["customer_id"]].append((_time(event["ts"]), event["event_type"]))
    signal = set()
    for customer, events in by_customer.items():
        label_ts = labels[customer][0]
        outages = [ts for ts, kind in events if kind == "outage_report" and ts < label_ts]
        calls = [ts for ts, kind in events if kind == "support_call" and ts < label_ts]
        if any(0 < call - outage <= 1800 for outage in outages for call in calls):
            signal.add(customer)
    with_signal = [labels[c][1] for c in labels if c in signal]
    without = [labels[c][1] for c in labels if c not in signal]
    assert len(with_signal) >= 10 and len(without) >= 10
    rate_with, rate_without = sum(with_signal) / len(with_signal), sum(without) / len(without)
    assert rate_with > 2 * rate_without


def test_a_churned_customer_sends_no_events_after_the_label(tmp_path):
    _generate(tmp_path, GenerateOptions(customers=80, days=3, seed=2, malformed_rate=0.0))
    labels = _outcomes(tmp_path)
    churned_after = [
        e
        for e in _valid_events(tmp_path)
        if labels[e["customer_id"]][1] == 1 and _time(e["ts"]) > labels[e["customer_id"]][0] + 7200
    ]
    assert any(churned for _, churned in labels.values())
    assert churned_after == []


def test_refuses_to_mix_with_files_already_there(generated):
    root, _ = generated
    with pytest.raises(ConfigError, match="already holds"):
        _generate(root)


def test_bad_options_and_unknown_use_cases_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="--customers"):
        GenerateOptions(customers=0)
    other = load_usecase(mutated_churn(tmp_path, lambda docs: docs["usecase.yaml"].update(name="fleet")))
    with pytest.raises(ConfigError, match="no data generator"):
        generate_landing(other, Paths(tmp_path), OPTIONS)


def test_the_telco_snapshot_has_blanks_dirt_and_a_learnable_label(tmp_path):
    """One CSV, one row per customer at one time, blanks in four columns, logged malformed rows, signal."""
    import pandas as pd

    from common.generate.telco import COLUMNS, MISSING

    summary = generate_landing(load_usecase("telco"), Paths(tmp_path), GenerateOptions(customers=2000, seed=3))
    frame = pd.read_csv(tmp_path / "landing" / "telco" / "customers" / "customers-000.csv", dtype=str)
    assert list(frame.columns) == COLUMNS and len(frame) == 2000 == summary.rows["customers"]
    assert frame["as_of"].nunique() == 1 and frame["customer_id"].dropna().is_unique
    for column, share in MISSING.items():
        assert 0.3 * share < frame[column].isna().mean() < 3 * share, column
    assert set(frame["churn"]) == {"Yes", "No"} and 0.15 < summary.facts["churn_rate"] < 0.4
    assert summary.facts["true_roc_auc"] > 0.8
    logged = read_malformed_log(tmp_path / "landing" / "telco")
    assert len(logged) == sum(summary.malformed["customers"].values()) > 0


def _churn_with_kafka_events(tmp_path: Path, bootstrap_env: str) -> Path:
    import yaml

    sample = Path(__file__).resolve().parent.parent / "metadata" / "churn" / "sources.kafka.yaml.sample"
    events = yaml.safe_load(sample.read_text())["sources"]["events"]
    events["kafka"]["bootstrap_env"] = bootstrap_env

    def mutate(documents):
        documents["sources.yaml"]["sources"]["events"] = events

    return mutated_churn(tmp_path, mutate)


def test_generate_to_kafka_publishes_a_source_to_the_cluster_its_bootstrap_env_names(tmp_path, monkeypatch):
    """A ``format: kafka`` source with its own ``bootstrap_env`` is published where its stream reads it, not to
    ``$LOOM_KAFKA_BOOTSTRAP``'s cluster; unset, the publish stops with the reader's message; the default cluster
    is asked for only when a source uses it."""
    from common.generate.to_kafka import sources_by_cluster

    asked: list[str] = []

    def default() -> str:
        asked.append("default")
        return "127.0.0.1:9092"

    own = load_usecase(_churn_with_kafka_events(tmp_path / "own", "LOOM_TEST_PARTNER_KAFKA"))
    monkeypatch.setenv("LOOM_TEST_PARTNER_KAFKA", "127.0.0.1:19092")
    assert sources_by_cluster(own, default) == {"127.0.0.1:19092": ["events"]}
    assert asked == []

    monkeypatch.delenv("LOOM_TEST_PARTNER_KAFKA")
    with pytest.raises(
        ConfigError, match=r"\$LOOM_TEST_PARTNER_KAFKA, which is not set.*export LOOM_TEST_PARTNER_KAFKA="
    ):
        sources_by_cluster(own, default)

    shared = load_usecase(_churn_with_kafka_events(tmp_path / "shared", "LOOM_KAFKA_BOOTSTRAP"))
    assert sources_by_cluster(shared, default) == {"127.0.0.1:9092": ["events"]}
    assert sources_by_cluster(load_usecase("churn"), default) == {"127.0.0.1:9092": ["events"]}
    assert asked == ["default", "default"]  # once per call, only for sources on the default cluster
