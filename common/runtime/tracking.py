"""MLflow tracking and registry location.

``MLFLOW_TRACKING_URI`` wins. Otherwise a sqlite store in the work folder
(``$LOOM_HOME/mlflow.db``) with artifacts under ``$LOOM_HOME/mlartifacts``.
"""

from __future__ import annotations

import os

from common.settings import Paths, paths

# mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; remember what we exported so
# that a later call for another work folder is not mistaken for the user's choice.
_exported: set[str] = set()


def tracking_uri(work: Paths | None = None) -> str:
    """The tracking (and registry) URI Loom uses."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri not in _exported:
        return uri
    work = work or paths()
    return f"sqlite:///{work.mlflow_db}"


def configure(work: Paths | None = None) -> str:
    """Point the mlflow client at the tracking store; returns the URI."""
    import mlflow

    work = work or paths()
    uri = tracking_uri(work)
    user_choice = os.environ.get("MLFLOW_TRACKING_URI") == uri and uri not in _exported
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if not user_choice:
        _exported.add(uri)
    return uri


def experiment(name: str, work: Paths | None = None) -> str:
    """Id of experiment ``name``, created with a local artifact root if needed."""
    import mlflow

    work = work or paths()
    local_store = tracking_uri(work) == f"sqlite:///{work.mlflow_db}"
    configure(work)
    location = None
    if local_store:
        work.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        location = work.mlflow_artifacts.as_uri()
    # Create first, look up on conflict: with a brand-new sqlite store, a lookup
    # before the first create makes MLflow ignore artifact_location.
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    found = mlflow.get_experiment_by_name(name)
    return found.experiment_id
