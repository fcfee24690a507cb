"""Bad metadata gives one specific message: file, YAML path, value and fix."""

from __future__ import annotations

import pytest

from common.errors import SpecError
from common.spec import load_usecase
from tests.spec_helpers import mutated_churn


def load_error(folder) -> str:
    with pytest.raises(SpecError) as caught:
        load_usecase(folder)
    return str(caught.value)


def test_the_sample_use_case_loads():
    spec = load_usecase("churn")
    assert spec.name == "churn"
    assert set(spec.sources) == {"customers", "events", "outcomes"}
    assert spec.sources["events"].event_time == "ts"


def test_unknown_key(tmp_path):
    def mutate(docs):
        docs["sources.yaml"]["sources"]["events"]["wartermark"] = "5 minutes"

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "sources.yaml: sources.events.wartermark: unknown key 'wartermark'" in message
    assert "watermark" in message, "the fix lists the valid keys"


def test_wrong_type(tmp_path):
    def mutate(docs):
        docs["usecase.yaml"]["version"] = "latest"

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "usecase.yaml: version" in message
    assert "'latest'" in message
    assert "whole number" in message


def test_missing_required_field(tmp_path):
    def mutate(docs):
        del docs["sources.yaml"]["sources"]["events"]["format"]

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "sources.yaml: sources.events.format: required key 'format' is missing" in message
    assert "Fix: add it" in message


def test_bad_yaml_syntax(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "usecase.yaml").write_text("name: churn\nentities:\n  customer: {key: customer_id\n")
    message = load_error(folder)
    assert "usecase.yaml" in message
    assert "invalid YAML at line" in message
    assert "Fix:" in message


def test_value_not_in_literal(tmp_path):
    def mutate(docs):
        docs["sources.yaml"]["sources"]["events"]["columns"]["amount"]["type"] = "float64"

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "sources.events.columns.amount.type: value not allowed (got 'float64')" in message
    assert "'double'" in message


def test_unknown_aggregation(tmp_path):
    def mutate(docs):
        docs["features.yaml"]["feature_groups"]["activity"]["features"][0]["agg"] = "median"

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "features.yaml: feature_groups.activity.features[0].agg: value not allowed (got 'median')" in message
    assert "'count_distinct'" in message


def test_unknown_transform_function(tmp_path):
    def mutate(docs):
        docs["features.yaml"]["feature_groups"]["activity"]["transforms"][0]["fn"] = "winsorize"

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "feature_groups.activity.transforms[0]: unknown fn 'winsorize'" in message
    assert "'clip'" in message


def test_window_without_event_time(tmp_path):
    def mutate(docs):
        docs["features.yaml"]["feature_groups"]["profile"]["features"].append(
            {"name": "fee_changes_7d", "agg": "count", "window": "7 days"}
        )
        del docs["sources.yaml"]["sources"]["customers"]["event_time"]

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "feature_groups.profile.features[7].window" in message
    assert "has no event_time" in message
    assert "Fix: set event_time on source 'customers'" in message


def test_unknown_source(tmp_path):
    def mutate(docs):
        docs["features.yaml"]["feature_groups"]["activity"]["source"] = "clickstream"

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "features.yaml: feature_groups.activity.source: unknown source (got 'clickstream')" in message
    assert "['customers', 'events', 'outcomes']" in message


def test_bad_duration(tmp_path):
    def mutate(docs):
        docs["features.yaml"]["feature_groups"]["activity"]["features"][0]["window"] = "a fortnight"

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "feature_groups.activity.features[0].window" in message
    assert "'<number> <unit>'" in message


def test_bad_sql(tmp_path):
    def mutate(docs):
        docs["features.yaml"]["feature_groups"]["activity"]["features"][0]["where"] = "event_type = = 'x'"

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "feature_groups.activity.features[0].where" in message
    assert "invalid SQL expression" in message


def test_bad_sql_in_an_expr_transform(tmp_path):
    def mutate(docs):
        transforms = docs["features.yaml"]["feature_groups"]["activity"]["transforms"]
        expr = next(index for index, transform in enumerate(transforms) if transform["fn"] == "expr")
        transforms[expr]["sql"] = "dura#tion_s / 60"

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "feature_groups.activity.transforms" in message
    assert "invalid SQL expression" in message
    assert "dura#tion_s" in message


def test_unknown_policy_method(tmp_path):
    def mutate(docs):
        docs["sources.yaml"]["sources"]["customers"]["columns"]["email"]["pii"] = {"method": "hash"}

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "sources.customers.columns.email.pii: unknown method 'hash'" in message
    assert "'pseudonymize'" in message
    assert "valid boolean" not in message


def test_unknown_use_case():
    with pytest.raises(SpecError) as caught:
        load_usecase("no_such_usecase")
    assert "no use case named 'no_such_usecase'" in str(caught.value)
    assert "churn" in str(caught.value)


def test_several_errors_are_reported_together(tmp_path):
    def mutate(docs):
        docs["sources.yaml"]["sources"]["events"]["extra"] = 1
        docs["usecase.yaml"]["version"] = "x"

    message = load_error(mutated_churn(tmp_path, mutate))
    assert "unknown key 'extra'" in message
    assert "usecase.yaml: version" in message
