"""Rebuild a model version's training profile from its run, for versions trained
before the training job logged one: the run's ``lineage.json`` pins every Delta
table it read, so the same training set, split and holdout scores come back."""

from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession

from common.compile.plan import Plan
from common.errors import ConfigError
from common.models.profile import PROFILE_FILE, training_profile
from common.settings import Paths


def rebuild_profile(spark: SparkSession, plan: Plan, model_name: str, work: Paths, version: int) -> dict[str, Any]:
    """The profile ``train_model`` logs (training set features, holdout scores) for ``version``, logged
    to the version's run as ``training_profile.json``; returns it."""
    import mlflow

    from common.models.train import lineage_versions, load_lineage, model_split
    from common.models.training_set import model_training_set
    from common.monitoring.tracking import monitoring_client, version_run_id

    client = monitoring_client(work)
    run_id = version_run_id(client, model_name, version)
    if run_id is None:
        raise ConfigError(f"model {model_name!r} has no version {version}. Fix: name a registered version")
    model = plan.model(model_name)
    versions = lineage_versions(load_lineage(run_id))
    frame = model_training_set(spark, plan, model, work, versions=versions).frame.toPandas()
    frame = frame.sort_values([model.label_time, model.entity_key], kind="stable").reset_index(drop=True)
    split = model_split(frame, model)
    loaded = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}").unwrap_python_model()
    scores = loaded.predict_features(split.holdout)
    profile = training_profile(frame, loaded.feature_spec.lookup_features, scores)
    client.log_dict(run_id, profile, PROFILE_FILE)
    return profile
