"""MLflow is real: sqlite tracking store, log, register, alias, load by alias."""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

from common.models.lineage import pip_requirements
from common.runtime.tracking import experiment, tracking_uri


def test_tracking_store_is_sqlite_in_the_work_folder(work):
    assert tracking_uri(work) == f"sqlite:///{work.mlflow_db}"


def test_log_register_alias_and_load(work):
    experiment_id = experiment("loom-test-registry", work)
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    model = LogisticRegression().fit(x, [0, 0, 1, 1])
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("roc_auc", 1.0)
        # Loom's training pins its requirements the same way (common.models.lineage); MLflow would
        # otherwise infer them by loading the model again in a subprocess (several seconds).
        info = mlflow.sklearn.log_model(
            model, name="model", registered_model_name="loom_test_model", pip_requirements=pip_requirements()
        )
    client = MlflowClient()
    version = info.registered_model_version
    client.set_registered_model_alias("loom_test_model", "champion", version)
    loaded = mlflow.pyfunc.load_model("models:/loom_test_model@champion")
    assert list(loaded.predict(x)) == [0, 0, 1, 1]
    assert client.get_model_version_by_alias("loom_test_model", "champion").run_id == run.info.run_id
    artifact_root = mlflow.get_experiment(experiment_id).artifact_location
    assert artifact_root.startswith(work.mlflow_artifacts.as_uri())
