"""Training, MLflow logging, registry promotion and rollback, the pyfunc, batch scoring.

Real components throughout: the demo's generated data in Delta, a sqlite MLflow
store with a local artifact folder, a real Redis for the online lookup.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from common.compile import compile_usecase
from common.errors import StoreError
from common.models import registry
from common.models.pyfunc import model_matrix
from common.models.scoring import score_batch
from common.models.train import lineage_versions, load_lineage, train_model
from common.models.training_set import create_training_set, model_training_set
from common.spec import load_usecase
from tests.spec_helpers import mutated_churn

AT = datetime(2026, 1, 12, 0, 0, tzinfo=UTC)
WEAK = {"max_iter": 1, "max_depth": 1, "learning_rate": 0.01}


def _run(trained):
    from common.runtime.tracking import configure

    configure(trained.work)
    return mlflow.get_run(trained.outcome.run_id)


def test_churn_model_reaches_the_auc_target_on_the_time_holdout(trained_churn):
    run = _run(trained_churn)
    assert run.data.metrics["holdout_roc_auc"] >= 0.75
    assert run.data.metrics["holdout_roc_auc"] == pytest.approx(trained_churn.outcome.metrics["roc_auc"])
    assert trained_churn.outcome.version == 1 and trained_churn.outcome.promoted


def test_the_run_logs_params_plots_lineage_and_the_model(trained_churn):
    run = _run(trained_churn)
    params, tags = run.data.params, run.data.tags
    assert params["estimator"] == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert params["estimator.max_depth"] == "3"
    assert {"delta.activity.version", "delta.profile.version", "delta.bronze.outcomes.version"} <= set(params)
    assert tags["loom.metadata_hash"] == trained_churn.plan.model("churn").metadata_hash
    assert tags["loom.code_version"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {
        "plots/roc_curve.png",
        "plots/pr_curve.png",
        "plots/calibration.png",
        "plots/feature_importance.png",
    }
    lineage = load_lineage(run.info.run_id)
    assert set(lineage["tables"]) == {"activity", "profile", "bronze.outcomes"}
    info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert info.signature is not None and "support_calls_7d" in info.signature.inputs.input_names()
    assert info.saved_input_example_info is not None


def test_training_set_rebuilt_from_the_logged_versions_is_identical(spark, trained_churn):
    versions = lineage_versions(load_lineage(trained_churn.outcome.run_id))
    model = trained_churn.plan.model("churn")
    first = model_training_set(spark, trained_churn.plan, model, trained_churn.work, versions=versions)
    again = model_training_set(spark, trained_churn.plan, model, trained_churn.work, versions=versions)
    run = _run(trained_churn)
    rows = first.frame.collect()
    assert len(rows) == int(run.data.params["rows.train"]) + int(run.data.params["rows.holdout"])
    assert first.frame.schema == again.frame.schema
    assert sorted(rows) == sorted(again.frame.collect())


def test_pyfunc_predicts_from_a_feature_frame(spark, trained_churn):
    from common.runtime.tracking import configure

    configure(trained_churn.work)
    loaded = mlflow.pyfunc.load_model("models:/churn@champion")
    spec = loaded.unwrap_python_model().feature_spec
    model = trained_churn.plan.model("churn")
    frame = model_training_set(spark, trained_churn.plan, model, trained_churn.work).frame.limit(50).toPandas()
    scores = np.asarray(loaded.predict(frame[[spec.entity_key, *spec.lookup_features]]))
    estimator = loaded.unwrap_python_model().estimator
    expected = estimator.predict_proba(model_matrix(spec, frame))[:, 1]
    assert scores.shape == (50,) and np.allclose(scores, expected)
    assert ((scores >= 0) & (scores <= 1)).all()
    # on-demand transforms ran inside the model
    assert spec.on_demand_outputs == ("calls_per_outage_7d", "log_streaming_minutes_1d")


def test_pyfunc_predicts_from_entity_keys_through_the_online_store(spark, trained_churn, redis_url, redis_client):
    from common.models.online_features import online_groups, open_model_store
    from common.runtime.tracking import configure

    configure(trained_churn.work)
    loaded = mlflow.pyfunc.load_model("models:/churn@champion", model_config={"redis_url": redis_url})
    spec = loaded.unwrap_python_model().feature_spec
    model = trained_churn.plan.model("churn")
    frame = model_training_set(spark, trained_churn.plan, model, trained_churn.work).frame.limit(20).toPandas()
    store = open_model_store(spec, redis_url)
    now_us = int(datetime.now(UTC).timestamp() * 1e6)
    for group in online_groups(spec):
        # the online vector carries every feature of the group; the model reads its selected ones
        values = np.full((len(frame), len(group.feature_names)), np.nan)
        for index, name in enumerate(group.feature_names):
            if name in frame.columns:
                values[:, index] = frame[name].astype("float64").to_numpy()
        store.write(group.name, frame[spec.entity_key].tolist(), values, np.full(len(frame), now_us))
    store.close()
    keys_only = frame[[spec.entity_key]].copy()
    from_keys = np.asarray(loaded.predict(keys_only))
    from_frame = np.asarray(loaded.predict(frame[[spec.entity_key, *spec.lookup_features]]))
    assert np.allclose(from_keys, from_frame, equal_nan=False)
    # an unknown key still scores, with every feature missing
    unknown = np.asarray(loaded.predict(pd.DataFrame({spec.entity_key: ["nobody"]})))
    assert unknown.shape == (1,) and 0 <= unknown[0] <= 1


def test_batch_scoring_writes_predictions_with_the_model_version(spark, trained_churn):
    entities = spark.createDataFrame([("C00000001",), ("C00000002",), ("C00000003",)], "customer_id string")
    ref, written, path = score_batch(spark, trained_churn.plan, "churn@champion", AT, trained_churn.work, entities)
    rows = written.collect()
    assert ref.version == trained_churn.outcome.version
    assert sorted(r["customer_id"] for r in rows) == ["C00000001", "C00000002", "C00000003"]
    assert {(r["model_name"], r["model_version"]) for r in rows} == {("churn", ref.version)}
    assert all(r["prediction_ts"].replace(tzinfo=UTC) == AT for r in rows)
    # the same scores as the pyfunc on the same point-in-time features
    from common.runtime.tracking import configure

    configure(trained_churn.work)
    loaded = mlflow.pyfunc.load_model(ref.uri).unwrap_python_model()
    spec = loaded.feature_spec
    asof = create_training_set(
        entities.withColumn("at", F.lit(AT)),
        [f"{g.name}.{f}" for g in spec.groups for f in g.selected],
        plan=trained_churn.plan,
        work=trained_churn.work,
        time_column="at",
    ).frame.toPandas()
    expected = dict(zip(asof["customer_id"], loaded.predict_features(asof), strict=True))
    for row in rows:
        assert row["score"] == pytest.approx(expected[row["customer_id"]], abs=1e-12)
    # idempotent: scoring again replaces, never duplicates
    score_batch(spark, trained_churn.plan, "churn@champion", AT, trained_churn.work, entities)
    table = spark.read.format("delta").load(path)
    assert table.where(f"model_version = {ref.version}").where(table.prediction_ts == AT).count() == 3


def test_batch_scoring_at_several_times_equals_one_time_at_a_time(spark, trained_churn):
    """One job for several times (a backtest, daily runs caught up): the rows of each time are the
    rows a single-time run writes, and re-running replaces exactly those times."""
    entities = spark.createDataFrame([("C00000004",), ("C00000005",)], "customer_id string")
    earlier, later = AT - timedelta(days=3), AT - timedelta(days=1)
    work, plan = trained_churn.work, trained_churn.plan
    _, together, path = score_batch(spark, plan, "churn@champion", [later, earlier, later], work, entities)
    both = {(r["customer_id"], r["prediction_ts"].replace(tzinfo=UTC)): r["score"] for r in together.collect()}
    assert set(both) == {(c, t) for c in ("C00000004", "C00000005") for t in (earlier, later)}
    for at in (earlier, later):
        _, alone, _ = score_batch(spark, plan, "churn@champion", at, work, entities)
        for row in alone.collect():
            assert row["score"] == pytest.approx(both[(row["customer_id"], at)], abs=1e-12)
    table = spark.read.format("delta").load(path).where(F.col("customer_id").isin("C00000004", "C00000005"))
    assert table.count() == 4  # replaced, never duplicated


@pytest.fixture(scope="module")
def promo(churn_lake, tmp_path_factory):
    """A second model (``churn_promo``, the churn model under another name) with a registry of its own."""

    def add_model(documents):
        documents["models.yaml"]["models"]["churn_promo"] = dict(documents["models.yaml"]["models"]["churn"])

    folder = mutated_churn(tmp_path_factory.mktemp("promo-spec"), add_model)
    return compile_usecase(load_usecase(folder))


def test_promotion_and_rollback(spark, churn_lake, promo):
    work, client = churn_lake.work, registry.client(churn_lake.work)
    first = train_model(spark, promo, "churn_promo", work, estimator_params=WEAK)
    assert first.promoted and "no champion yet" in first.decision
    assert registry.version_by_alias("churn_promo", "champion", client) == first.version

    better = train_model(spark, promo, "churn_promo", work)
    assert better.metrics["roc_auc"] > first.metrics["roc_auc"] + 0.002
    assert better.promoted, better.decision
    assert registry.version_by_alias("churn_promo", "champion", client) == better.version
    assert registry.version_by_alias("churn_promo", "challenger", client) == better.version
    # the champion was scored on the new run's holdout, not with its own old metric
    assert better.champion_metric == pytest.approx(first.metrics["roc_auc"], abs=0.05)

    worse = train_model(spark, promo, "churn_promo", work, estimator_params=WEAK)
    assert not worse.promoted and "stays @challenger" in worse.decision
    assert registry.version_by_alias("churn_promo", "champion", client) == better.version
    assert registry.version_by_alias("churn_promo", "challenger", client) == worse.version

    move = registry.rollback("churn_promo", client)
    assert (move.from_version, move.to_version) == (better.version, first.version)
    assert registry.version_by_alias("churn_promo", "champion", client) == first.version
    recorded = json.loads(client.get_registered_model("churn_promo").tags[registry.LAST_MOVE_TAG])
    assert recorded["from"] == better.version and recorded["to"] == first.version and recorded["reason"] == "rollback"
    assert "loom.rolled_back_at" in client.get_model_version("churn_promo", str(better.version)).tags
    with pytest.raises(StoreError, match="first champion"):
        registry.rollback("churn_promo", client)


def test_train_score_rollback_jobs_from_the_cli(trained_churn, monkeypatch, capsys):
    from jobs.cli import main

    monkeypatch.setenv("LOOM_HOME", str(trained_churn.work.home))
    assert main(["rollback", "--usecase", "churn", "--model", "churn"]) == 2
    err = capsys.readouterr().err
    assert "no previous one" in err and "Traceback" not in err
    assert main(["train", "--usecase", "churn", "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no model 'nope'" in err and "use one of ['churn']" in err


def test_artifacts_hold_no_raw_pii(trained_churn):
    """Input example and logged files carry features and pseudonymous keys only."""
    from common.runtime.tracking import configure

    configure(trained_churn.work)
    folder = Path(mlflow.artifacts.download_artifacts(run_id=trained_churn.outcome.run_id))
    text = "\n".join(p.read_text(errors="ignore") for p in folder.rglob("*") if p.suffix in (".json", ".yaml", ".txt"))
    for column in ("email", "phone", "full_name", "street_address", "account_number", "date_of_birth"):
        assert column not in text
