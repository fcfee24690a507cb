"""Shared fixtures: one SparkSession for the whole run, one real redis-server,
and a temporary LOOM_HOME so tests never touch the developer's work folder."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

# Before any Loom import reads them: an isolated work area and MLflow store.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="loom-test-home-"))
os.environ["LOOM_HOME"] = str(_SESSION_HOME)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ.setdefault("LOOM_KEY_PII_HMAC", "test-hmac-key-not-a-secret-0123456789")
os.environ.setdefault(
    "LOOM_KEY_PII_ENCRYPTION", "dGVzdC1lbmNyeXB0aW9uLWtleS0wMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg=="
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def loom_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def work(loom_home):
    from common.settings import paths

    return paths()


@pytest.fixture(scope="session")
def spark():
    """The one SparkSession of the test run: local[2], 2 shuffle partitions, no UI."""
    from common.spark import build_session

    session = build_session(
        "local",
        app_name="loom-tests",
        overrides={
            "spark.master": "local[2]",
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.ui.enabled": "false",
            "spark.driver.memory": "3g",
        },
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis: $REDIS_URL, or a redis-server started for this run."""
    from common.redis_server import configured_or_throwaway

    with configured_or_throwaway() as url:
        yield url


@pytest.fixture()
def redis_client(redis_url):
    """A client on a flushed database, so tests do not see each other's keys."""
    from common.redis_server import connect

    client = connect(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture()
def tmp_table(tmp_path) -> str:
    """Path for a fresh Delta table."""
    return str(tmp_path / "table")
