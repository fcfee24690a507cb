"""Issue 15's acceptance: the distributed topology end to end, through the public CLI.

``loom cluster up`` starts a Spark standalone cluster (a master, two workers of 1 core), a Redis Cluster
(three masters) and an MLflow tracking server; the churn pipeline then runs on them as a user runs it,
each step a ``loom`` process with the variables ``up`` printed and ``--profile standalone``:
generate -> ingest -> backfill -> train -> stream (``--available-now``: ingestion, features and the
trigger query, which scores its firings with @champion) -> consistency -> score -> serve (one REST
request). ``train`` runs before ``stream`` (the issue lists it after): without a champion the trigger
query records its firings unscored, and there would be no stream predictions to compare.

The reference is the same pipeline on ``local[2]`` with a single redis-server and a sqlite MLflow store:
the same landing files through the same jobs (``main_for``, their CLI entry) in this process, on the
session's SparkSession, in another ``LOOM_HOME``. It runs while ``loom cluster up`` starts the engines.

The engines are started with an environment without Loom's, Redis's or MLflow's variables (and without
the PII keys): what an executor needs must travel with the job, as on a real cluster. ``PYTHONPATH``
names this checkout, whose code the executors import (a clean clone has it installed too, `make setup`).

Time (2 cores, load 2-3 from other work): 310-330 s. The reference and ``up`` take 65-95 s together; each of
the six Spark jobs 21-73 s, most of it fixed: a driver, then two fresh executor JVMs and their Python
workers for every application. The stream is the longest: its stateful queries ran 61-73 s with the 64
shuffle partitions the ``standalone`` profile used to set, 39 s with the 4 of the cluster's defaults now.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from common.lake.paths import predictions_path
from common.models.scoring import PREDICTION_TS, SCORE
from common.runtime.processes import alive, free_port
from common.runtime.python_daemon import PRELOAD_ENV
from common.runtime.redis_cluster import CLUSTER_ENV
from common.runtime.redis_server import RedisServer
from common.runtime.spark_standalone import master_state
from common.settings import Paths
from common.triggers.operator import FIRING_TS

REPO = Path(__file__).resolve().parents[1]
USECASE, MODEL, KEY = "churn", "churn", "customer_id"
# tiny data: every step runs on it in one micro-batch, and it still has labels of both classes and
# outage -> support call sequences for the trigger to fire on
CUSTOMERS, DAYS = 120, 3
SERVE_KEY = "e2e-test-key-not-a-secret-5b1d0c7e"  # a test key, not a secret
# the Spark jobs of the run (application names loom-<job>-churn[-churn]), each of which must have run on both workers
SPARK_JOBS = ("ingest", "backfill", "train", "stream", "consistency", "score")
STEP_TIMEOUT_S = 600


def _tail(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\n--- stderr ends:\n{done.stderr[-3000:]}\n--- stdout ends:\n{done.stdout[-1500:]}"


def _loom(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``loom ARGS`` (the console script's module) in a process of its own; a failure shows its output's tail."""
    command = [sys.executable, "-m", "jobs.cli", *args]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    print(f"loom {' '.join(args[:2])}: {time.monotonic() - started:.1f}s", file=sys.stderr)  # shown on a failure
    if check:
        assert done.returncode == 0, f"loom {' '.join(args)}: {_tail(done)}"
    return done


def _engine_env(home: Path) -> dict[str, str]:
    """The environment of ``loom cluster`` (and so of the engines it starts): no Loom, Redis, MLflow or Spark
    settings of the test session, this checkout first on the Python path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOOM_", "REDIS_", "MLFLOW_", "SPARK_", "PYSPARK_", "JDK_JAVA_OPTIONS"))
    }
    env.update(LOOM_HOME=str(home), PYTHONPATH=str(REPO))
    return env


def _exports(stdout: str) -> dict[str, str]:
    """The ``export NAME=value`` lines ``loom cluster up`` prints."""
    pairs = (line.removeprefix("export ").split("=", 1) for line in stdout.splitlines() if line.startswith("export "))
    return dict(pairs)


def _read_state(home: Path) -> dict:
    return json.loads((home / "cluster" / "state.json").read_text())


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


def _reference(spark, home: Path, landing: Path, at: str, monkeypatch, capsys) -> set[str]:
    """The pipeline on the session's ``local[2]``, a redis-server of its own and a sqlite MLflow store in
    ``home``: the same jobs through their CLI entry, in this process. Returns the keys it left in Redis."""
    import jobs.backfill
    import jobs.ingest
    import jobs.score
    import jobs.stream
    import jobs.train
    from jobs.runner import main_for

    shutil.copytree(landing, home / "landing" / USECASE)
    steps = [
        ("ingest", jobs.ingest, ["--usecase", USECASE]),
        ("backfill", jobs.backfill, ["--usecase", USECASE]),
        ("train", jobs.train, ["--usecase", USECASE, "--model", MODEL]),
        ("stream", jobs.stream, ["--usecase", USECASE, "--available-now"]),
        ("score", jobs.score, ["--usecase", USECASE, "--model", f"{MODEL}@champion", "--at", at]),
    ]
    with RedisServer() as single, monkeypatch.context() as env:
        env.setenv("LOOM_HOME", str(home))
        env.setenv("REDIS_URL", single.url)
        for name in (CLUSTER_ENV, "MLFLOW_TRACKING_URI", PRELOAD_ENV):
            # set first, so that the context's end restores each as it was, also one a job sets on its way
            # (`loom stream` sets PRELOAD_ENV, MLflow exports its tracking URI)
            env.setenv(name, "")
            env.delenv(name)
        for name, job, argv in steps:
            code = main_for(name, job, argv)
            err = capsys.readouterr().err
            assert code == 0, f"reference `loom {name}` on local[2]: exit {code}; stderr ends:\n{err[-3000:]}"
        client = redis.Redis.from_url(single.url)
        keys = {k.decode() for k in client.scan_iter(match=f"loom:{USECASE}:*", count=1000)}
        client.close()
    return keys


def _scores(spark, work: Paths, kind: str, columns: tuple[str, ...]) -> dict[tuple, float | None]:
    rows = spark.read.format("delta").load(predictions_path(work, USECASE, kind)).select(*columns, SCORE).collect()
    found = {tuple(row[c] for c in columns): row[SCORE] for row in rows}
    assert len(found) == len(rows), f"{kind} predictions: a key of {columns} appears twice"
    return found


def _assert_same_scores(name: str, cluster: dict, local: dict) -> None:
    assert cluster.keys() == local.keys(), f"{name}: keys differ: {sorted(cluster.keys() ^ local.keys())[:5]}"
    gaps = {k: abs(cluster[k] - local[k]) for k in local if cluster[k] is not None or local[k] is not None}
    assert all(cluster[k] is not None and local[k] is not None for k in gaps), f"{name}: a score is missing"
    worst = max(gaps.items(), key=lambda item: item[1])
    assert worst[1] <= 1e-9, f"{name}: cluster vs local[2] differ by {worst[1]:.3g} at {worst[0]}"


def _rest_prediction(env: dict[str, str], home: Path, keys: list[str]) -> dict:
    """``loom serve`` (one worker) on a free port; one POST of ``keys``; the server stopped. The answer."""
    port = free_port()
    log = home / "serve.log"
    command = [sys.executable, "-m", "jobs.cli", "serve", "--usecase", USECASE, "--workers", "1"]
    command += ["--port", str(port), "--no-log-predictions"]
    with log.open("w") as sink:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"loom serve exited {server.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"loom serve not ready in 180 s: {log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as ready:
                    if ready.status == 200:
                        break
            except (urllib.error.URLError, OSError):  # not listening yet, or 503 until the model is loaded
                pass
            time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/{MODEL}/predict",
            data=json.dumps({"entities": [{KEY: key} for key in keys]}).encode(),
            headers={"Content-Type": "application/json", "X-API-Key": SERVE_KEY},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _executors_by_app(state: dict) -> tuple[dict[str, str], dict[str, set[str]]]:
    """The master's applications (id -> name) and, from each worker's JSON UI, the workers on which each
    application had an executor (id -> worker ids)."""
    master = master_state(state["spark"]["ui_url"])
    assert master is not None, "the Spark master's JSON UI does not answer"
    apps = {app["id"]: app["name"] for app in master["activeapps"] + master["completedapps"]}
    workers: dict[str, set[str]] = {}
    for worker in master["workers"]:
        with urllib.request.urlopen(f"{worker['webuiaddress']}/json", timeout=5) as answer:
            shown = json.load(answer)
        for executor in shown["executors"] + shown["finishedexecutors"]:
            workers.setdefault(executor["appid"], set()).add(worker["id"])
    return apps, workers


def _finished_tasks(spark_folder: Path, app_id: str) -> list[int]:
    """Per executor of ``app_id`` (its folder under the workers' ``work/``), the tasks its log says it finished."""
    logs = sorted((spark_folder / "work" / app_id).glob("*/stderr"))
    return [log.read_text(errors="replace").count("Finished task") for log in logs]


@pytest.mark.slow
@pytest.mark.spark
def test_the_pipeline_on_the_local_cluster_gives_the_predictions_of_local_2(spark, tmp_path, monkeypatch, capsys):
    home, reference_home = tmp_path / "cluster-home", tmp_path / "local-home"
    engines = _engine_env(home)
    started = time.monotonic()
    assert _loom(engines, "cluster", "status", check=False).returncode == 1, "status before up: not running"

    start = datetime.now(UTC).date() - timedelta(days=DAYS)  # data up to today: online features within their TTL
    at = f"{(start + timedelta(days=DAYS)).isoformat()}T00:00:00Z"  # after every event
    jobs_env = {**engines, **{k: v for k, v in os.environ.items() if k.startswith("LOOM_KEY_")}}
    generate = ["generate", "--usecase", USECASE, "--customers", str(CUSTOMERS), "--days", str(DAYS)]
    _loom(jobs_env, *generate, "--start", start.isoformat())

    up_command = [sys.executable, "-m", "jobs.cli", "cluster", "up"]
    up = subprocess.Popen(up_command, cwd=REPO, env=engines, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = None
    try:
        reference_keys = _reference(spark, reference_home, home / "landing" / USECASE, at, monkeypatch, capsys)
        out, err = up.communicate(timeout=STEP_TIMEOUT_S)
        assert up.returncode == 0, f"loom cluster up: {_tail(subprocess.CompletedProcess([], up.returncode, out, err))}"
        state = _read_state(home)
        exports = _exports(out)
        assert exports["SPARK_MASTER_URL"] == state["spark"]["master_url"]
        assert exports["SPARK_CONF_DIR"] == state["spark"]["conf_dir"]
        assert exports["REDIS_URL"] == state["redis"]["url"] and exports[CLUSTER_ENV] == "1"
        assert exports["MLFLOW_TRACKING_URI"] == state["mlflow"]["url"]
        assert exports["PYSPARK_PYTHON"] == sys.executable, "the workers run on this machine: this interpreter"
        shown = _loom(engines, "cluster", "status")
        assert shown.stdout.count("(up)") == 3, shown.stdout
        _loom(engines, "cluster", "up")  # already running: the same engines, nothing new started
        assert _read_state(home) == state
        print(f"cluster up and reference run: {time.monotonic() - started:.0f}s", file=sys.stderr)

        # the pipeline on the cluster, as a user runs it after `eval "$(loom cluster up)"`
        env = {**jobs_env, **exports, "LOOM_API_KEYS": f"e2e:{SERVE_KEY}"}
        spark_args = ["--usecase", USECASE, "--profile", "standalone"]
        _loom(env, "ingest", *spark_args)
        _loom(env, "backfill", *spark_args)
        _loom(env, "train", *spark_args, "--model", MODEL)
        _loom(env, "stream", *spark_args, "--available-now")
        checked = _loom(env, "consistency", *spark_args, check=False)
        _loom(env, "score", *spark_args, "--model", f"{MODEL}@champion", "--at", at)
        work, reference = Paths(home), Paths(reference_home)
        local_batch = _scores(spark, reference, "batch", (KEY, PREDICTION_TS))
        asked = sorted(key for key, _ in local_batch)[:3]
        answer = _rest_prediction(env, home, asked)
        print(f"cluster pipeline done: {time.monotonic() - started:.0f}s", file=sys.stderr)

        # 0 consistency mismatches, every online group, every entity
        assert checked.returncode == 0 and "consistency: OK" in checked.stdout, _tail(checked)
        groups = [line for line in checked.stdout.splitlines() if line.startswith("group ")]
        assert len(groups) == 2 and all(", 0 mismatched, 0 missing online" in line for line in groups), groups

        # the predictions of local[2] with a single Redis and sqlite MLflow, to 1e-9: batch, stream, REST
        _assert_same_scores("batch scores", _scores(spark, work, "batch", (KEY, PREDICTION_TS)), local_batch)
        assert len(local_batch) >= CUSTOMERS * 0.9, f"batch: {len(local_batch)} entities scored"
        by_firing = (KEY, "trigger", FIRING_TS)
        local_stream = _scores(spark, reference, "stream", by_firing)
        assert sum(score is not None for score in local_stream.values()) >= 3, f"stream: {local_stream}"
        _assert_same_scores("stream predictions", _scores(spark, work, "stream", by_firing), local_stream)
        assert answer["version"] == 1 and [p["key"] for p in answer["predictions"]] == asked, answer
        when = datetime.fromisoformat(at.replace("Z", "+00:00")).replace(tzinfo=None)
        for prediction in answer["predictions"]:
            assert prediction["known"], prediction
            expected = local_batch[(prediction["key"], when)]
            assert abs(prediction["score"] - expected) <= 1e-9, (prediction, expected)

        # the executors ran the tasks: every job was an application of the master, with an executor on each
        # worker, and executors of both workers finished tasks
        apps, workers = _executors_by_app(state)
        ours = {app_id: name for app_id, name in apps.items() if name.startswith("loom-")}
        assert sorted(name.split("-")[1] for name in ours.values()) == sorted(SPARK_JOBS), ours
        for app_id, name in ours.items():
            assert len(workers.get(app_id, ())) == 2, f"{name} ({app_id}) had executors on {workers.get(app_id)}"
            tasks = _finished_tasks(home / "cluster" / "spark", app_id)
            assert len(tasks) == 2 and min(tasks) > 0, f"{name} ({app_id}): tasks finished per executor {tasks}"

        # the keys spread over the three Redis masters, and they are the single node's keys
        per_master = {}
        for address in state["redis"]["addresses"]:
            host, port = address.rsplit(":", 1)
            node = redis.Redis(host=host, port=int(port))
            per_master[address] = {k.decode() for k in node.scan_iter(match=f"loom:{USECASE}:*", count=1000)}
            node.close()
        assert len(per_master) == 3 and all(len(keys) > len(reference_keys) / 10 for keys in per_master.values()), {
            address: len(keys) for address, keys in per_master.items()
        }
        assert set().union(*per_master.values()) == reference_keys
        assert sum(map(len, per_master.values())) == len(reference_keys), "each key on one master"
    finally:
        if up.poll() is None:
            up.wait(timeout=STEP_TIMEOUT_S)
        stopped = _loom(engines, "cluster", "down", check=False)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, _tail(stopped)
    pids = [pid for engine in ("spark", "redis", "mlflow") for pid in state[engine]["pids"]]
    assert _wait_gone(pids, timeout=30) == [], "`loom cluster down` left engines running"
    assert _loom(engines, "cluster", "status", check=False).returncode == 1, "status after down: not running"
    print(f"whole test: {time.monotonic() - started:.0f}s", file=sys.stderr)
