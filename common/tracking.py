"""MLflow tracking and registry location.

``MLFLOW_TRACKING_URI`` wins. Otherwise a sqlite store in the work folder
(``$LOOM_HOME/mlflow.db``) with artifacts under ``$LOOM_HOME/mlartifacts``.
"""

from __future__ import annotations

import os

from common.settings import Paths, paths


def tracking_uri(work: Paths | None = None) -> str:
    """The tracking (and registry) URI Loom uses."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    work = work or paths()
    return f"sqlite:///{work.mlflow_db}"


def configure(work: Paths | None = None) -> str:
    """Point the mlflow client at the tracking store; returns the URI."""
    import mlflow

    work = work or paths()
    uri = tracking_uri(work)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment(name: str, work: Paths | None = None) -> str:
    """Id of experiment ``name``, created with a local artifact root if needed."""
    import mlflow

    work = work or paths()
    configure(work)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        work.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        location = work.mlflow_artifacts.as_uri()
    return mlflow.create_experiment(name, artifact_location=location)
