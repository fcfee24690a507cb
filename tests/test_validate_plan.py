"""`loom validate` compiles the whole plan and reports every problem before any job runs (issue 19,
items 2 and 3): lineage and names, on-demand outputs, model inputs, one_hot column names."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.compile import compile_usecase
from common.errors import CompileError, SpecError, SpecErrors
from common.spec import load_usecase
from common.spec.transforms import safe_name

BIN = Path(sys.executable).parent

# A snapshot-shaped use case as a new user writes it: one table, categorical and numeric columns, a label.
TELCO: dict[str, Any] = {
    "name": "telco",
    "entities": {"customer": {"key": "customer_id"}},
    "sources": {
        "customers": {
            "kind": "table",
            "format": "csv",
            "path": "{landing}/customers",
            "entity": "customer",
            "columns": {
                "customer_id": {"type": "string", "required": True},
                "contract": {"type": "string"},
                "payment": {"type": "string"},
                "tenure": {"type": "double"},
                "churn": {"type": "string"},
                "snapshot_ts": {"type": "timestamp"},
            },
        }
    },
    "feature_groups": {
        "profile": {
            "entity": "customer",
            "source": "customers",
            "transforms": [
                {"name": "contract", "fn": "one_hot", "input": "contract", "values": ["Month-to-month", "One year"]},
                {
                    "name": "payment",
                    "fn": "one_hot",
                    "input": "payment",
                    "values": ["Bank transfer (automatic)", "Electronic check"],
                    "names": {"Electronic check": "pays_by_echeck"},
                },
            ],
            "features": [
                {"name": "tenure", "expr": "tenure"},
                {"name": "month_to_month", "expr": "contract_month_to_month"},
                {"name": "bank_transfer", "expr": "payment_bank_transfer_automatic"},
                {"name": "echeck", "expr": "pays_by_echeck"},
            ],
        }
    },
    "models": {
        "churn": {
            "entity": "customer",
            "label": {"source": "customers", "expr": "churn = 'Yes'", "time": "snapshot_ts"},
            "features": ["profile.tenure", "profile.month_to_month"],
            "on_demand": [{"name": "log_tenure", "fn": "log", "input": "tenure"}],
            "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
        }
    },
}


def _write(tmp_path: Path, mutate=None) -> Path:
    document = copy.deepcopy(TELCO)
    if mutate is not None:
        mutate(document)
    folder = tmp_path / "metadata" / "telco"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "usecase.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return folder


def _group(document: dict[str, Any]) -> dict[str, Any]:
    return document["feature_groups"]["profile"]


def _compile_error(tmp_path: Path, mutate) -> SpecError:
    folder = _write(tmp_path, mutate)
    with pytest.raises(SpecError) as caught:
        compile_usecase(load_usecase(folder))
    return caught.value


def test_the_example_compiles_with_safe_one_hot_names(tmp_path):
    plan = compile_usecase(load_usecase(_write(tmp_path)))
    [contract, payment] = plan.group("profile").transforms
    assert contract.outputs() == ["contract_month_to_month", "contract_one_year"]
    assert payment.outputs() == ["payment_bank_transfer_automatic", "pays_by_echeck"]


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("Month-to-month", "month_to_month"),
        ("Bank transfer (automatic)", "bank_transfer_automatic"),
        ("  Fiber optic ", "fiber_optic"),
        ("DSL", "dsl"),
        ("No internet service", "no_internet_service"),
        ("__a--b__", "a_b"),
        ("2 years", "2_years"),
    ],
)
def test_the_naming_rule(raw, safe):
    assert safe_name(raw) == safe


def test_validate_reports_every_problem_with_file_path_value_and_fix(tmp_path):
    """Five independent mistakes, all reported by one `loom validate` (it used to stop at the first)."""

    def mutate(document):
        group = _group(document)
        group["features"].append({"name": "two_year", "expr": "contract_Two_year"})  # a guessed one-hot name
        group["features"].append({"name": "customer_id", "expr": "tenure"})  # the entity key's name
        group["transforms"].append({"name": "churn", "fn": "fill", "input": "tenure", "value": 0})  # a source column
        model = document["models"]["churn"]
        model["on_demand"].append({"name": "echeck", "fn": "log", "input": "tenure"})  # a feature's name
        model["label"]["expr"] = "churned = 'Yes'"  # the source's column is churn

    folder = _write(tmp_path, mutate)
    done = subprocess.run(
        [str(BIN / "loom"), "validate", "--usecase", str(folder)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stdout
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("loom validate: error: ") and len(done.stderr.encode()) < 1024, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("  - ")]
    assert "5 problems in the metadata:" in done.stdout and len(lines) == 5, done.stdout
    file = str(folder / "usecase.yaml")
    assert all(line.startswith(f"  - {file}: ") and ". Fix: " in line for line in lines), lines
    expected = [
        ("feature_groups.profile.transforms[2].name", "'churn', which is already a column of source 'customers'"),
        ("feature_groups.profile.features[4]", "reads unknown column 'contract_Two_year'"),
        ("feature_groups.profile.features[5].name", "has the name of the entity key"),
        ("models.churn.on_demand[1].name", "has the name of the feature profile.echeck"),
        ("models.churn.label.expr", "reads ['churned'], which source 'customers' does not have"),
    ]
    for path, text in expected:
        assert any(f"{file}: {path}: " in line and text in line for line in lines), (path, done.stdout)
    assert "contract_month_to_month" in done.stdout, "the fix lists the names the one_hot really produces"


def test_an_on_demand_output_named_like_a_feature_the_model_does_not_select(tmp_path):
    def mutate(document):
        document["models"]["churn"]["on_demand"][0]["name"] = "bank_transfer"

    error = _compile_error(tmp_path, mutate)
    assert isinstance(error, CompileError)
    assert error.path == "models.churn.on_demand[0].name" and "profile.bank_transfer" in str(error)


def test_two_on_demand_outputs_with_one_name(tmp_path):
    def mutate(document):
        document["models"]["churn"]["on_demand"].append(
            {"name": "log_tenure", "fn": "clip", "input": "tenure", "min": 0}
        )

    error = _compile_error(tmp_path, mutate)
    assert error.path == "models.churn.on_demand[1].name" and "earlier on-demand output" in str(error)


def test_a_label_expression_over_a_missing_column(tmp_path):
    def mutate(document):
        document["models"]["churn"]["label"]["expr"] = "CASE WHEN Churn = 'Yes' THEN 1 ELSE 0 END"

    error = _compile_error(tmp_path, mutate)
    assert error.path == "models.churn.label.expr" and "['Churn']" in str(error)


def test_a_feature_named_like_the_feature_time_column(tmp_path):
    def mutate(document):
        _group(document)["features"].append({"name": "feature_ts", "expr": "tenure"})

    error = _compile_error(tmp_path, mutate)
    assert error.path == "feature_groups.profile.features[4].name" and "feature time column" in str(error)


def test_one_hot_values_that_give_one_column_name_both(tmp_path):
    def mutate(document):
        _group(document)["transforms"][0]["values"] = ["One year", "One-year", "Month-to-month"]

    with pytest.raises(SpecErrors) as caught:
        load_usecase(_write(tmp_path, mutate))
    [error] = caught.value.errors
    assert error.path == "feature_groups.profile.transforms[0]"
    assert "'One year' and 'One-year' both give the column 'contract_one_year'" in str(error)
    assert "names:" in str(error)


def test_one_hot_names_map_must_name_listed_values_and_give_safe_names(tmp_path):
    def unknown_value(document):
        _group(document)["transforms"][0]["names"] = {"Two year": "contract_two_year"}

    def bad_name(document):
        _group(document)["transforms"][0]["names"] = {"One year": "Contract-1y"}

    with pytest.raises(SpecErrors, match=r"names: maps \['Two year'\]"):
        load_usecase(_write(tmp_path / "a", unknown_value))
    with pytest.raises(SpecErrors, match=r"transforms\[0\]\.names\.One year"):
        load_usecase(_write(tmp_path / "b", bad_name))


def test_a_value_without_letters_or_digits_asks_for_a_name(tmp_path):
    def mutate(document):
        _group(document)["transforms"][0]["values"] = ["Month-to-month", "--"]

    with pytest.raises(SpecErrors, match=r"value '--' has no letter or digit.*name it under names:"):
        load_usecase(_write(tmp_path, mutate))


@pytest.mark.spark
def test_batch_and_stream_compute_the_plans_one_hot_columns(spark, tmp_path):
    """The columns the plan names are the columns the shared row stage (batch and stream) adds."""
    from common.features.prepare import apply_transforms

    plan = compile_usecase(load_usecase(_write(tmp_path))).group("profile")
    rows = spark.createDataFrame(
        [
            ("c1", "Month-to-month", "Electronic check"),
            ("c2", "One year", None),
            ("c3", None, "Bank transfer (automatic)"),
        ],
        "customer_id string, contract string, payment string",
    )
    out = {r["customer_id"]: r for r in apply_transforms(plan, rows).collect()}
    names = [column for t in plan.transforms for column in t.outputs()]
    assert set(names) <= set(out["c1"].asDict())
    assert (out["c1"]["contract_month_to_month"], out["c1"]["contract_one_year"], out["c1"]["pays_by_echeck"]) == (
        1.0,
        0.0,
        1.0,
    )
    assert out["c2"]["contract_one_year"] == 1.0 and out["c2"]["payment_bank_transfer_automatic"] is None
    assert out["c3"]["contract_month_to_month"] is None and out["c3"]["payment_bank_transfer_automatic"] == 1.0
