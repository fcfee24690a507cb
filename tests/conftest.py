"""Shared fixtures: one SparkSession for the whole run, one real redis-server,
and a temporary LOOM_HOME so tests never touch the developer's work folder."""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
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


# Under ``make test`` (``pytest -n 2 --dist loadgroup``) each xdist worker is a process of its own, with its own
# session fixtures (SparkSession, redis-server, LOOM_HOME, churn lake). The tests on the churn lake are one group,
# so the lake is built once, on one worker; every other test goes with its module (module fixtures set up once),
# and the scheduler gives modules to whichever worker is free. A worker starts its SparkSession for the first
# test that needs one, so there are still at most two, one a worker. (The tests on the session SparkSession were
# one group too: 2,277 of the suite's 4,589 s of test time in one run, one unit that set the suite's length as
# soon as the lake's group got shorter.) Without ``--dist loadgroup`` (``make test-fast``, a plain ``pytest``)
# the groups change nothing.
LAKE_GROUP = "spark-churn-lake"

# The groups that take minutes, longest first (clean-clone CI and a loaded run on 2 cores agree on the order):
# the scheduler hands them out first, so the short ones fill in at the end. xdist's own order (groups by number
# of tests) gave single-test groups such as the retraining loop (~100 s) last, and one worker waited for it.
# A group not listed follows these, by number of tests, as xdist would order it.
LONG_GROUPS = (
    LAKE_GROUP,
    "tests/test_cluster_e2e.py",
    "tests/test_kafka.py",
    "tests/test_notebooks.py",
    "tests/test_privacy_lifecycle.py",
    "tests/test_pipeline.py",
    "tests/test_ingest.py",
    "tests/test_retraining_loop.py",
    "tests/test_monitoring.py",
    "tests/test_cli.py",
    "tests/test_local_cluster.py",
    "tests/test_shadow.py",
    "tests/test_materialize.py",
    "tests/test_process_guard.py",
    "tests/test_telco.py",
    "tests/test_redis_cluster_stream.py",
)


def xdist_group(item) -> str:
    """The xdist group of a test: the churn lake's when it uses the lake, else its module."""
    if "churn_lake" in getattr(item, "fixturenames", ()):
        return LAKE_GROUP
    return item.nodeid.split("::")[0]


def _by_group(config) -> bool:
    return config.getoption("dist", default="no") == "loadgroup"


def pytest_configure(config):
    """Under ``--dist loadgroup`` the groups go out in the order of the collection, which
    :func:`pytest_collection_modifyitems` sets (:data:`LONG_GROUPS` first), not xdist's by number of tests."""
    if _by_group(config):
        config.option.loadscopereorder = False


def scheduling_order(items, group_of) -> list:
    """``items`` with whole groups in :data:`LONG_GROUPS` order, then the other groups by number of tests (most
    first); the collection order within a group and between groups that tie (a stable sort)."""
    groups = [group_of(item) for item in items]
    sizes = Counter(groups)
    rank = {group: index for index, group in enumerate(LONG_GROUPS)}
    keys = [(rank.get(group, len(rank)), -sizes[group]) for group in groups]
    return [item for _, item in sorted(zip(keys, items, strict=True), key=lambda pair: pair[0])]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the xdist_group marks into node ids
def pytest_collection_modifyitems(config, items):
    """Mark ``spark`` every test that uses the session SparkSession, directly or through another fixture,
    and give every test its xdist group (:func:`xdist_group`); under ``--dist loadgroup``, order the groups
    longest first (:func:`scheduling_order`).

    ``item.fixturenames`` is the test's whole fixture closure, so a test that only asks for ``churn_lake``
    is marked too. Tests that start Spark another way (spark-submit, ``loom`` subprocesses that run Spark
    jobs, notebooks) carry an explicit ``@pytest.mark.spark``. ``make test-fast`` deselects both tiers.
    Without groups the order stays the collection's: a module split in two would set up its fixtures twice.
    """
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
    if _by_group(config):
        items[:] = scheduling_order(items, xdist_group)


@pytest.fixture(scope="session")
def loom_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def work(loom_home):
    from common.settings import paths

    return paths()


def quick_jvm_options() -> str | None:
    """The driver JVM options Loom gives its short batch jobs (common/runtime/jvm.py), or None when turned off.

    The quick C1 compiler, a serial GC and the class-data-sharing archive ``make setup`` builds: for the
    Spark subprocesses the tests start (``loom stream``, spark-submit), short jobs like those. Given through
    ``JDK_JAVA_OPTIONS`` (:func:`quick_jvm_env`). ``LOOM_QUICK_JVM=0`` turns them off here too.
    """
    from common.runtime.jars import delta_jars
    from common.runtime.jvm import driver_options
    from common.runtime.spark import read_profile

    return driver_options(read_profile("local"), "loom-score", delta_jars())  # what `loom score` gets


def quick_jvm_env() -> dict[str, str]:
    """Environment for a subprocess that starts a Spark JVM (``loom stream``, spark-submit) with the quick options."""
    options = quick_jvm_options()
    return {"JDK_JAVA_OPTIONS": options} if options else {}


@pytest.fixture(scope="session")
def spark():
    """The one SparkSession of the test run: local[2], 2 shuffle partitions, no UI, no generated code.

    The JVM's defaults, not :func:`quick_jvm_options`: the session lives the whole run, and with C1 only its
    Spark work ran about 1.5 times slower (clean-clone CI at load 2-3: the notebooks, privacy lifecycle and
    pipeline set-ups).
    """
    from common.runtime.spark import build_session

    overrides = {
        "spark.master": "local[2]",
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.driver.memory": "3g",
        # No generated code: the tests plan thousands of small queries, and each one's generated classes were
        # compiled by Janino, then by the JIT, for a few rows each. Interpreted, the JIT compiles Spark's
        # operators once for all of them. Full suite in this checkout: 1,265 s and 2,296 CPU s (load 2.28)
        # with code generation, 1,115 s and 2,008 CPU s (load 2.13) without. Spark's interpreted path gives
        # the same results (its own suites run both). The `loom`, `loom stream` and spark-submit
        # subprocesses keep the product's defaults (in a small `loom ingest`, on its quick C1-compiled JVM,
        # codegen off made no difference).
        "spark.sql.codegen.wholeStage": "false",
        "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    }
    session = build_session("local", app_name="loom-tests", overrides=overrides)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis: $REDIS_URL, or a redis-server started for this run."""
    from common.runtime.redis_server import configured_or_throwaway

    with configured_or_throwaway() as url:
        yield url


@pytest.fixture()
def redis_client(redis_url):
    """A client on a flushed database, so tests do not see each other's keys."""
    from common.runtime.redis_server import connect

    client = connect(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture()
def tmp_table(tmp_path) -> str:
    """Path for a fresh Delta table."""
    return str(tmp_path / "table")


# Fixed end date: the demo's data set (common.generate.options.demo_options), reproducible.
DEMO_END = "2026-01-15"


@pytest.fixture(scope="session")
def churn_lake(spark, tmp_path_factory):
    """The demo's churn data, generated, batch-ingested and backfilled once, in its own work folder
    (lake, MLflow store). Tests that need other registry states train under other model names."""
    from datetime import date
    from types import SimpleNamespace

    from common.compile import compile_usecase
    from common.features.backfill import backfill
    from common.generate import generate_landing
    from common.generate.options import demo_options
    from common.ingest.stream import ingest_source
    from common.settings import Paths
    from common.spec import load_usecase

    work = Paths(tmp_path_factory.mktemp("churn-lake"))
    spec = load_usecase("churn")
    plan = compile_usecase(spec)
    generate_landing(spec, work, demo_options(date.fromisoformat(DEMO_END)))
    for source in spec.sources:
        ingest_source(spark, spec, source, work)
    backfill(spark, work, plan)
    return SimpleNamespace(work=work, spec=spec, plan=plan)


@pytest.fixture(scope="session")
def trained_churn(spark, churn_lake):
    """``churn_lake`` plus the churn model trained from its metadata: registered v1, @champion."""
    from types import SimpleNamespace

    from common.models.train import train_model

    outcome = train_model(spark, churn_lake.plan, "churn", churn_lake.work)
    return SimpleNamespace(**vars(churn_lake), outcome=outcome)
