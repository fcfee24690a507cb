"""The telco snapshot use case (metadata/telco) end to end, as a new user runs it on their own table.

One CSV table, one row per customer, categorical and numeric columns with blanks, the yes/no label
in the same table, every row at the same time: validate -> ingest -> backfill -> train (entity
split, imputer + scaler + logistic regression Pipeline) -> score -> materialize -> serve, with the
holdout ROC AUC near what the generator's true probabilities reach, and REST = batch to 1e-9.
Then the same lake shows that estimator refusals are one-line errors and that labels can be
corrected (latest ingested wins per id).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.spark, pytest.mark.slow]

CUSTOMERS = 1500
AS_OF = datetime(2026, 1, 1, tzinfo=UTC)  # the snapshot's time (every row)
AT = datetime(2026, 1, 2, tzinfo=UTC)  # scoring, materialization and the REST clock
MODEL = "telco_churn"
KEY = "ops-test-key-telco-4e1a7c9b2d"
DB = 9  # a database of the shared Redis of its own


@pytest.fixture(scope="module")
def telco(spark, tmp_path_factory):
    """The telco snapshot, generated into its own work folder (lake, MLflow store)."""
    from common.compile import compile_usecase
    from common.generate import GenerateOptions, generate_landing
    from common.settings import Paths
    from common.spec import load_usecase

    work = Paths(tmp_path_factory.mktemp("telco-lake"))
    spec = load_usecase("telco")
    summary = generate_landing(spec, work, GenerateOptions(customers=CUSTOMERS, start=AS_OF.date()))
    return SimpleNamespace(work=work, spec=spec, plan=compile_usecase(spec), summary=summary, outcome=None)


@pytest.fixture(scope="module")
def online_url(redis_url):
    import redis

    from tests.test_serving import _db_url

    url = _db_url(redis_url, DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def test_validate_ingest_backfill_train_score_materialize_serve(spark, telco, online_url):
    from fastapi.testclient import TestClient

    from common.features.backfill import backfill
    from common.features.publish import materialize
    from common.ingest.stream import ingest_source
    from common.models.scoring import score_batch
    from common.models.train import train_model
    from common.serving.app import create_app
    from common.serving.auth import ApiKeys
    from common.serving.config import ServingConfig

    validate = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "validate", "--usecase", "telco"], cwd=REPO, capture_output=True, text=True
    )
    assert validate.returncode == 0, validate.stderr
    assert "models: telco_churn" in validate.stdout

    bad = sum(telco.summary.malformed["customers"].values())
    report = ingest_source(spark, telco.spec, "customers", telco.work)
    assert (report.read, report.quarantined) == (CUSTOMERS, bad)
    accepted = CUSTOMERS - bad
    (history,) = backfill(spark, telco.work, telco.plan)
    assert (history.rows, history.entities) == (accepted, accepted)  # one snapshot row per customer

    outcome = train_model(spark, telco.plan, MODEL, telco.work)
    telco.outcome = outcome
    true_auc = telco.summary.facts["true_roc_auc"]  # the true probabilities against the drawn labels
    assert outcome.metrics["roc_auc"] >= max(0.78, true_auc - 0.06), (outcome.metrics, true_auc)
    import mlflow

    params = mlflow.get_run(outcome.run_id).data.params
    assert params["split.kind"] == "entity" and params["split.seed"] == "7" and params["split.cutoff"] == "none"
    assert params["preprocessing"] == "simple_imputer,standard_scaler" and params["fast_predictor"] == "pipeline"
    rows_holdout = int(params["rows.holdout"])
    assert (
        abs(rows_holdout - accepted * 0.25) < accepted * 0.06 and int(params["rows.train"]) + rows_holdout == accepted
    )

    ref, written, _ = score_batch(spark, telco.plan, f"{MODEL}@champion", AT, telco.work)
    batch = {row["customer_id"]: row["score"] for row in written.collect()}
    assert len(batch) == accepted and ref.version == outcome.version

    (published,) = materialize(spark, telco.work, telco.plan, AT, online_url)
    assert published.written == accepted

    # customers with blanks (NaN features, imputed inside the model) and one nobody knows
    features = spark.read.format("delta").load(history.table).toPandas().set_index("customer_id")
    blanks = sorted(features.index[features.isna().any(axis=1)])[:10]
    full = sorted(features.index[~features.isna().any(axis=1)])[:10]
    keys = [*blanks, *full, "T9999999"]
    assert len(blanks) == 10
    config = ServingConfig(models=(MODEL,), usecase="telco", redis_url=online_url, log_predictions=False)
    app = create_app(config, work=telco.work, keys=ApiKeys.parse(f"ops:{KEY}"), clock=lambda: AT)
    with TestClient(app) as client:
        response = client.post(
            f"/v1/models/{MODEL}/predict",
            json={"entities": [{"customer_id": k} for k in keys]},
            headers={"X-API-Key": KEY},
        )
    assert response.status_code == 200, response.text
    predictions = {p["key"]: p for p in response.json()["predictions"]}
    for key in [*blanks, *full]:
        assert predictions[key]["known"], key
        assert predictions[key]["score"] == pytest.approx(batch[key], abs=1e-9), key
    assert any(predictions[k]["missing"] for k in blanks) and not any(predictions[k]["missing"] for k in full)
    assert not predictions["T9999999"]["known"]
    assert len({round(batch[k], 6) for k in keys[:-1]}) > 10  # real, different scores


def test_missing_values_without_an_imputer_stop_training_with_one_line(spark, telco, monkeypatch):
    """The snapshot has blanks: without the imputer step the estimator refuses them, and the user reads why."""
    from common.errors import EstimatorError
    from common.models.train import train_model

    if telco.outcome is None:
        pytest.skip("needs the lake of the end-to-end test")
    plan = telco.plan
    original = plan.model(MODEL)
    bare = dataclasses.replace(original, spec=original.spec.model_copy(update={"preprocessing": []}))
    monkeypatch.setattr(type(plan), "model", lambda self, name: bare)
    with pytest.raises(EstimatorError) as caught:
        train_model(spark, plan, MODEL, telco.work, register=False)
    message = str(caught.value)
    assert message.startswith(
        f"model '{MODEL}': step 'estimator' (LogisticRegression) failed to fit: Input X contains NaN"
    )
    assert "imputer" in message and "\n" not in message


def test_a_corrected_label_replaces_the_first_one(spark, telco):
    """A re-sent row of a customer (a newer snapshot time) corrects its label: one label per id, the latest ingested."""
    import pandas as pd

    from common.generate.telco import COLUMNS
    from common.ingest.stream import ingest_source
    from common.lake.paths import landing_folder
    from common.models.training_set import model_training_set
    from common.monitoring.sources import read_outcomes

    if telco.outcome is None:
        pytest.skip("needs the lake of the end-to-end test")
    model = telco.plan.model(MODEL)
    before = model_training_set(spark, telco.plan, model, telco.work).frame.toPandas().set_index("customer_id")
    folder = landing_folder(telco.spec.sources["customers"], telco.work.landing / "telco")
    original = pd.read_csv(f"{folder}/customers-000.csv", dtype=str, keep_default_na=False)
    corrected = original[original["customer_id"].isin(before.index[:40])].copy()
    corrected["as_of"] = (AS_OF + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    corrected["churn"] = np.where(corrected["churn"] == "Yes", "No", "Yes")
    corrected[COLUMNS].to_csv(f"{folder}/customers-corrections.csv", index=False)
    report = ingest_source(spark, telco.spec, "customers", telco.work)
    assert (report.read, report.accepted) == (40, 40)

    after = model_training_set(spark, telco.plan, model, telco.work).frame.toPandas().set_index("customer_id")
    assert len(after) == len(before) and after.index.is_unique  # replaced, not added
    changed = before.index[:40]
    assert (after.loc[changed, "label"] == 1 - before.loc[changed, "label"]).all()
    assert (after.loc[before.index[40:], "label"] == before.loc[before.index[40:], "label"]).all()
    assert (pd.to_datetime(after.loc[changed, "as_of"], utc=True) == AS_OF + timedelta(days=1)).all()
    outcomes = read_outcomes(spark, telco.work, "telco", model, telco.spec.sources["customers"]).toPandas()
    assert outcomes["customer_id"].is_unique and len(outcomes) == len(before)


def test_a_column_split_reads_the_label_sources_column_through_the_training_set(spark, telco, monkeypatch):
    """kind: column carries the label source's column into the training set; values other than test/train stop
    training with one line (here the gender column, which is no split marker)."""
    from common.errors import DataError
    from common.models.train import train_model
    from common.spec.models import Split

    if telco.outcome is None:
        pytest.skip("needs the lake of the end-to-end test")
    plan = telco.plan
    original = plan.model(MODEL)
    by_column = Split.model_validate({"kind": "column", "column": "gender"})
    marked = dataclasses.replace(original, spec=original.spec.model_copy(update={"split": by_column}))
    monkeypatch.setattr(type(plan), "model", lambda self, name: marked)
    with pytest.raises(DataError, match=r"split column 'gender' holds \d+ values that are neither test nor train"):
        train_model(spark, plan, MODEL, telco.work, register=False)
