"""The compiler refuses plans that would be wrong, naming file, path and fix."""

from __future__ import annotations

import pytest

from common.compile import compile_usecase
from common.compile.transforms import registered
from common.errors import CompileError, PrivacyError
from common.spec import load_usecase
from common.spec.transforms import Transform
from tests.spec_helpers import mutated_churn


def compile_error(folder, kind=CompileError) -> str:
    spec = load_usecase(folder)
    with pytest.raises(kind) as caught:
        compile_usecase(spec)
    return str(caught.value)


def test_the_sample_use_case_compiles_with_ordered_transforms():
    plan = compile_usecase(load_usecase("churn"))
    activity = plan.group("activity")
    names = [t.name for t in activity.transforms]
    assert names.index("event_hour") < names.index("is_evening")
    assert names.index("amount_clipped") < names.index("log_amount")
    assert activity.max_window_s == 30 * 86400
    assert plan.group("profile").source_kind == "table"


def test_every_transform_in_the_spec_has_an_implementation():
    declared = {member.model_fields["fn"].annotation.__args__[0] for member in Transform.__origin__.__args__}
    assert declared == set(registered())


def test_pii_column_without_policy_reaching_a_feature(tmp_path):
    def mutate(docs):
        docs["sources.yaml"]["sources"]["customers"]["columns"]["zip"]["pii"] = True
        docs["features.yaml"]["feature_groups"]["profile"]["features"].append(
            {"name": "zip_area", "expr": "cast(substr(zip, 1, 1) as int)"}
        )

    message = compile_error(mutated_churn(tmp_path, mutate), PrivacyError)
    assert "sources.yaml: sources.customers.columns.zip.pii" in message
    assert "PII column customers.zip has no policy" in message
    assert "customers.zip -> feature profile.zip_area -> offline store and Redis" in message
    assert "Fix: give the column a policy" in message


def test_pii_column_without_policy_through_a_transform(tmp_path):
    def mutate(docs):
        docs["sources.yaml"]["sources"]["customers"]["columns"]["segment"]["pii"] = True

    message = compile_error(mutated_churn(tmp_path, mutate), PrivacyError)
    # activity joins customers.segment, transform is_business reads it, a feature sums it
    assert "customers.segment -> transform is_business -> feature activity.business_events_7d" in message


def test_pii_column_without_policy_that_no_feature_reads(tmp_path):
    def mutate(docs):
        docs["sources.yaml"]["sources"]["customers"]["columns"]["street_address"]["pii"] = True

    message = compile_error(mutated_churn(tmp_path, mutate), PrivacyError)
    assert "sources.customers.columns.street_address.pii" in message
    assert "bronze table churn/bronze/customers" in message


def test_dropped_column_read_by_a_feature(tmp_path):
    def mutate(docs):
        docs["features.yaml"]["feature_groups"]["profile"]["features"].append(
            {"name": "name_length", "expr": "length(full_name)"}
        )

    message = compile_error(mutated_churn(tmp_path, mutate))
    assert "column customers.full_name is dropped at ingestion" in message
    assert "features.yaml: feature_groups.profile.features[7]" in message


def test_cyclic_transforms(tmp_path):
    def mutate(docs):
        transforms = docs["features.yaml"]["feature_groups"]["activity"]["transforms"]
        transforms.append({"name": "ping", "fn": "expr", "sql": "pong + 1"})
        transforms.append({"name": "pong", "fn": "expr", "sql": "ping * 2"})

    message = compile_error(mutated_churn(tmp_path, mutate))
    assert "features.yaml: feature_groups.activity.transforms: transforms form a cycle" in message
    assert "ping -> pong -> ping" in message or "pong -> ping -> pong" in message
    assert "Fix: break the cycle" in message


def test_missing_reference_in_a_transform(tmp_path):
    def mutate(docs):
        docs["features.yaml"]["feature_groups"]["activity"]["transforms"].append(
            {"name": "speed", "fn": "ratio", "numerator": "amount", "denominator": "duration_minutes"}
        )

    message = compile_error(mutated_churn(tmp_path, mutate))
    assert "transform 'speed' reads unknown column 'duration_minutes'" in message
    assert "feature_groups.activity.transforms[6]" in message
    assert "'duration_s'" in message, "the fix lists the columns that exist"


def test_missing_reference_in_a_feature(tmp_path):
    def mutate(docs):
        docs["features.yaml"]["feature_groups"]["activity"]["features"][0]["where"] = "event_kind = 'x'"

    message = compile_error(mutated_churn(tmp_path, mutate))
    assert "feature 'support_calls_1d' reads unknown column 'event_kind'" in message
    assert "feature_groups.activity.features[0]" in message
