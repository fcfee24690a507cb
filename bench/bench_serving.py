"""REST prediction latency: the whole HTTP prediction at a fixed open-loop rate, and Feast beside it.

Set-up, all on this machine:

* a Loom pyfunc (50 float features in one group, two on-demand transforms,
  a HistGradientBoostingClassifier of 100 trees of depth 3, like churn's)
  registered @champion in a throwaway MLflow store;
* a real Redis ($REDIS_URL, or a redis-server started here) holding 10,000
  entities × 50 features;
* the real server: ``uvicorn common.serving.app:app_from_env --factory`` in a
  subprocess, one worker (what ``loom serve`` runs), configured by the environment;
  with its defaults, so the prediction log is on: ``LOOM_SERVE_USECASE`` names
  the bench's use case and every answer is appended to its ``predictions/rest``
  Delta table in the bench's own work folder (deleted at the end). A row says
  whether the log was on and how many rows it wrote by the server's shutdown;
* an open-loop load generator (asyncio on uvloop, raw HTTP/1.1 keep-alive
  connections, up to 32): requests are due at a fixed rate whatever the
  answers do, and each latency runs from the moment its request is due to the
  moment its whole answer is read (waiting for a free connection counts). The
  generator's own timer lag is reported in the note.

Measured path: HTTP -> API key -> one MGET -> on-demand transforms -> predict ->
JSON, for 1 and for 100 random entities per request. For context, the same
lookup + predict in process (no HTTP) is measured too.

Peer: Feast's ``get_online_features`` (in-process SDK calls, as in DESIGN.md
§4) on the same values in the same Redis, run by a Feast installed in a
separate venv (``.cache/feast-venv``, never in .venv); reported as not
measured, with the reason, when that venv is absent or fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine_load_row
from common.redis_server import configured_or_throwaway, free_port

NAME = "serving"
FEATURES = 50
MODEL = "bench_serving"
RATE = 200  # requests per second, open loop
MAX_CONNECTIONS = 32  # beyond this, due requests wait for a connection (and that wait counts)
EVENT_TIME_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
FEAST_PYTHON = Path(__file__).resolve().parent.parent / ".cache" / "feast-venv" / "bin" / "python"


def _names() -> tuple[str, ...]:
    return tuple(f"f{i:02d}" for i in range(FEATURES))


def _ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(samples) * 1000.0, q)), 3)


# -- the model and the data ----------------------------------------------------


def _register_model(work: Any, usecase: str) -> Any:
    """Log and register the synthetic Loom pyfunc @champion; returns its feature spec."""
    import joblib
    import mlflow
    from sklearn.ensemble import HistGradientBoostingClassifier

    from common.compile.feature_spec import FeatureSpec, GroupRef
    from common.models import registry
    from common.models.pyfunc import ESTIMATOR, FEATURE_SPEC, LoomModel
    from common.tracking import experiment

    names = _names()
    spec = FeatureSpec(
        usecase=usecase,
        usecase_version=1,
        model=MODEL,
        entity="customer",
        entity_key="customer_id",
        groups=(GroupRef("activity", names, None, names),),
        on_demand=(
            {"name": "f00_per_f01", "fn": "ratio", "numerator": "f00", "denominator": "f01"},
            {"name": "log_f02", "fn": "log", "input": "f02"},
        ),
    )
    rng = np.random.default_rng(5)
    x = rng.random((5000, len(spec.inputs)))
    y = (x[:, 0] + 0.3 * rng.random(5000) > 0.6).astype(int)
    estimator = HistGradientBoostingClassifier(max_iter=100, max_depth=3, learning_rate=0.05, random_state=7)
    estimator.fit(x, y)
    with tempfile.TemporaryDirectory() as folder:
        joblib.dump(estimator, Path(folder) / "estimator.joblib")
        (Path(folder) / "feature_spec.json").write_text(spec.to_json())
        with mlflow.start_run(experiment_id=experiment("loom-bench-serving", work)):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=LoomModel(),
                artifacts={ESTIMATOR: f"{folder}/estimator.joblib", FEATURE_SPEC: f"{folder}/feature_spec.json"},
                pip_requirements=["scikit-learn"],
            )
    version = int(mlflow.register_model(info.model_uri, MODEL).version)
    registry.promote(MODEL, version, "benchmark", registry.client(work))
    return spec


def _fill(url: str, spec: Any, entities: int) -> tuple[list[str], np.ndarray]:
    from common.models.online_features import open_model_store

    keys = [f"C{i:08d}" for i in range(entities)]
    values = np.random.default_rng(11).random((entities, FEATURES))
    with open_model_store(spec, url) as store:
        result = store.write("activity", keys, values, np.full(entities, EVENT_TIME_US, dtype=np.int64))
    if result.written != entities:
        raise RuntimeError(f"filled {result} of {entities} vectors")
    return keys, values


def _in_process(spec: Any, url: str, keys: list[str], iterations: int) -> list[dict[str, Any]]:
    """The same lookup + predict without HTTP (context for the HTTP figures)."""
    import mlflow
    from threadpoolctl import threadpool_limits

    from common.models.online_features import lookup, open_model_store

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").unwrap_python_model()
    rng = np.random.default_rng(13)
    rows: list[dict[str, Any]] = []
    with threadpool_limits(1), open_model_store(spec, url) as store:
        for batch in (1, 100):
            lookups: list[float] = []
            totals: list[float] = []
            for _ in range(iterations + 50):
                wanted = [keys[i] for i in rng.integers(0, len(keys), batch)]
                start = time.perf_counter()
                frame = lookup(store, spec, wanted, EVENT_TIME_US).frame
                looked = time.perf_counter()
                model.predict_features(frame)
                lookups.append(looked - start)
                totals.append(time.perf_counter() - start)
            note = f"in process, no HTTP, {iterations} calls; lookup alone p50 {_ms(lookups[50:], 50)} ms, p99 {_ms(lookups[50:], 99)} ms"
            for q in (50, 99):
                rows.append(
                    {
                        "metric": f"in-process lookup + predict, {batch} × 50 features p{q}",
                        "value": _ms(totals[50:], q),
                        "unit": "ms",
                        "target": None,
                        "note": note,
                    }
                )
    return rows


# -- the server ----------------------------------------------------------------


def _start_server(
    home: Path, url: str, api_key: str, max_batch: int, usecase: str
) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    # every other LOOM_SERVE_ setting keeps its default: the prediction log is on, as in production
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_SERVE_") and k != "MLFLOW_TRACKING_URI"}
    env.update(
        {
            "LOOM_HOME": str(home),
            "REDIS_URL": url,
            "LOOM_API_KEYS": f"bench:{api_key}:{MODEL}",
            "LOOM_SERVE_MODELS": MODEL,
            "LOOM_SERVE_USECASE": usecase,  # names the prediction log's table (under LOOM_HOME)
            "LOOM_SERVE_MAX_BATCH": str(max_batch),
            "LOOM_LOG_LEVEL": "WARNING",
        }
    )
    env.pop("LOOM_API_KEYS_FILE", None)
    log_path = home / "server.log"
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "common.serving.app:app_from_env",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent
        )
    import urllib.request

    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return process, port, log_path
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not become ready: {log_path.read_text()[-2000:]}")
        time.sleep(0.25)


def _requests(port: int, api_key: str, keys: list[str], batch: int, count: int) -> list[bytes]:
    rng = np.random.default_rng(batch)
    head = (
        f"POST /v1/models/{MODEL}/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {api_key}\r\n"
        "Content-Type: application/json\r\n"
    )
    out = []
    for _ in range(count):
        body = json.dumps({"entities": [{"customer_id": keys[i]} for i in rng.integers(0, len(keys), batch)]}).encode()
        out.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return out


async def _exchange(connection: tuple[Any, Any], request: bytes) -> tuple[int, bytes]:
    reader, writer = connection
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
    return status, await reader.readexactly(length)


async def _open_loop(port: int, requests: list[bytes], rate: float) -> dict[str, Any]:
    """Send ``requests`` at ``rate`` per second on at most MAX_CONNECTIONS keep-alive connections.

    Each latency runs from the moment the request is due to leave (after the
    generator's timer fired) to the moment its whole answer is read, so time
    spent waiting for a free connection when the server falls behind counts.
    """
    loop = asyncio.get_running_loop()
    idle: list[tuple[Any, Any]] = []
    free = asyncio.Semaphore(MAX_CONNECTIONS)
    opened = 0
    latencies: list[float] = []
    lags: list[float] = []
    statuses: dict[int, int] = {}
    sample: list[bytes] = []

    async def one(request: bytes, scheduled: float) -> None:
        nonlocal opened
        due = time.perf_counter()
        lags.append(loop.time() - scheduled)
        async with free:
            if idle:
                connection = idle.pop()
            else:
                connection = await asyncio.open_connection("127.0.0.1", port)
                opened += 1
            status, body = await _exchange(connection, request)
            latencies.append(time.perf_counter() - due)
            idle.append(connection)
        statuses[status] = statuses.get(status, 0) + 1
        if not sample:
            sample.append(body)

    start = loop.time() + 0.05
    tasks = []
    for index, request in enumerate(requests):
        scheduled = start + index / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(request, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    for _, writer in idle:
        writer.close()
    return {
        "latencies": latencies,
        "statuses": statuses,
        "connections": opened,
        "achieved_rps": len(requests) / elapsed,
        "lag_p99_ms": _ms(lags, 99),
        "sample": sample[0] if sample else b"",
    }


async def _sequential(port: int, requests: list[bytes]) -> list[float]:
    """One request at a time on one connection: the service time, without queueing."""
    connection = await asyncio.open_connection("127.0.0.1", port)
    latencies = []
    for request in requests:
        sent = time.perf_counter()
        status, _ = await _exchange(connection, request)
        latencies.append(time.perf_counter() - sent)
        if status != 200:
            raise RuntimeError(f"sequential request answered {status}")
    connection[1].close()
    return latencies


def _run_loop(coroutine: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        return asyncio.run(coroutine)


def _http_rows(port: int, api_key: str, keys: list[str], quick: bool) -> tuple[list[dict[str, Any]], int]:
    """The HTTP latency rows, and how many entities the server scored (what its prediction log should hold)."""
    seconds = 3 if quick else 30
    rows: list[dict[str, Any]] = []
    entities = 0
    for batch, target in ((1, 2.5), (100, 10.0)):
        warm = _requests(port, api_key, keys, batch, 200)
        warmed = _run_loop(_open_loop(port, warm, RATE))
        entities += warmed["statuses"].get(200, 0) * batch
        label = f"HTTP predict {batch} {'entity' if batch == 1 else 'entities'} × 50 features"
        alone = _run_loop(_sequential(port, _requests(port, api_key, keys, batch, 200 if quick else 1000)))
        entities += len(alone) * batch  # _sequential raises unless every answer is a 200
        note = f"{len(alone)} requests one after the other (closed loop, no queueing): the service time"
        for q in (50, 99):
            rows.append(
                {
                    "metric": f"{label}, sequential p{q}",
                    "value": _ms(alone, q),
                    "unit": "ms",
                    "target": None,
                    "note": note,
                }
            )
        result = _run_loop(_open_loop(port, _requests(port, api_key, keys, batch, int(RATE * seconds)), RATE))
        body = json.loads(result["sample"])
        if result["statuses"] != {200: len(result["latencies"])} or len(body["predictions"]) != batch:
            raise RuntimeError(f"unexpected answers: {result['statuses']}, sample {result['sample'][:300]!r}")
        if not all(p["known"] and not p["missing"] for p in body["predictions"]):
            raise RuntimeError(f"the server did not find the bench features: {result['sample'][:300]!r}")
        entities += len(result["latencies"]) * batch
        note = (
            f"{len(result['latencies'])} requests at {RATE} rps open loop (achieved {result['achieved_rps']:.0f}), "
            f"{result['connections']} connection(s) (max {MAX_CONNECTIONS}), timer lag p99 {result['lag_p99_ms']} ms, 1 uvicorn worker, "
            "prediction log on (defaults)"
        )
        rows.append(
            {
                "metric": f"{label} p50",
                "value": _ms(result["latencies"], 50),
                "unit": "ms",
                "target": None,
                "note": note,
            }
        )
        rows.append(
            {
                "metric": f"{label} p99",
                "value": _ms(result["latencies"], 99),
                "unit": "ms",
                "target": f"<= {target}",
                "note": note,
            }
        )
    return rows, entities


def _prediction_log_row(work: Any, usecase: str, scored: int) -> dict[str, Any]:
    """Was the prediction log on during the HTTP runs? Read its Delta table after the server's clean shutdown."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from common.models.scoring import predictions_path
    from common.serving.prediction_spool import SPOOL_FOLDER

    table = predictions_path(work, usecase, "rest")
    try:
        written = DeltaTable(table).to_pyarrow_dataset().count_rows()
    except TableNotFoundError:
        written = 0
    spooled = len(list((Path(table) / SPOOL_FOLDER).glob("*.parquet")))
    return {
        "metric": "prediction log during the HTTP runs",
        "value": "on" if written or spooled else "off",
        "unit": "",
        "target": None,
        "note": f"{written} row(s) in the Delta table predictions/rest of the bench work folder after shutdown, "
        f"for {scored} entities scored; {spooled} spool file(s); default flush interval (LOOM_SERVE_LOG_FLUSH_S)",
    }


# -- the peer: Feast, in its own venv --------------------------------------------

_FEAST_SCRIPT = r"""
import json, sys, tempfile, time, os
from datetime import datetime, timezone, timedelta
from pathlib import Path
import numpy as np, pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource
from feast.types import Float64
from feast.value_type import ValueType

redis_target, values_path, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
values = np.load(values_path)
n, width = values.shape
names = [f"f{i:02d}" for i in range(width)]
keys = [f"C{i:08d}" for i in range(n)]
repo = Path(tempfile.mkdtemp(prefix="loom-bench-feast-"))
(repo / "feature_store.yaml").write_text(
    "project: loom_bench_serving\nprovider: local\nregistry: " + str(repo / "registry.db") + "\n"
    "online_store:\n  type: redis\n  connection_string: \"" + redis_target + "\"\n"
    "offline_store:\n  type: file\nentity_key_serialization_version: 3\n"
)
when = datetime(2026, 1, 1, tzinfo=timezone.utc)
frame = pd.DataFrame(values, columns=names)
frame.insert(0, "customer_id", keys)
frame["event_timestamp"] = when
frame.to_parquet(repo / "activity.parquet")
customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
source = FileSource(path=str(repo / "activity.parquet"), timestamp_field="event_timestamp")
view = FeatureView(name="activity", entities=[customer], ttl=timedelta(days=3650),
                   schema=[Field(name=c, dtype=Float64) for c in names], online=True, source=source)
store = FeatureStore(repo_path=str(repo))
store.apply([customer, view])
start = time.perf_counter()
store.write_to_online_store("activity", frame)
write_s = time.perf_counter() - start
refs = [f"activity:{c}" for c in names]
rng = np.random.default_rng(17)
out = {"feast": __import__("feast").__version__, "write_s": write_s}
try:
    for batch in (1, 100):
        samples = []
        for i in range(iterations + 50):
            rows = [{"customer_id": keys[j]} for j in rng.integers(0, n, batch)]
            t = time.perf_counter()
            result = store.get_online_features(features=refs, entity_rows=rows).to_dict()
            samples.append(time.perf_counter() - t)
            if i == 0 and result["f00"][0] is None:
                raise SystemExit("feast returned no value for a written entity")
        samples = np.asarray(samples[50:]) * 1000
        out[str(batch)] = {"p50": float(np.percentile(samples, 50)), "p99": float(np.percentile(samples, 99)),
                           "calls": iterations}
finally:
    store.teardown()
print(json.dumps(out))
"""


def _feast_rows(url: str, values: np.ndarray, quick: bool) -> list[dict[str, Any]]:
    from urllib.parse import urlsplit

    if not FEAST_PYTHON.exists():
        return [
            {
                "metric": "Feast get_online_features (peer)",
                "value": "not measured",
                "unit": "",
                "target": None,
                "note": f"no Feast venv at {FEAST_PYTHON}: python3.11 -m venv .cache/feast-venv && "
                ".cache/feast-venv/bin/pip install 'feast[redis]==0.67.0'",
            }
        ]
    parts = urlsplit(url)
    if parts.password or parts.username or parts.scheme != "redis":
        target = None  # Feast's connection string would need the secret on its command line: not done
    else:
        target = f"{parts.hostname}:{parts.port or 6379},db={(parts.path or '/0').strip('/') or 0}"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "values.npy"
        np.save(path, values)
        iterations = 200 if quick else 2000
        try:
            if target is None:
                raise RuntimeError("the bench Redis needs credentials; the Feast peer runs only on an open local Redis")
            done = subprocess.run(
                [str(FEAST_PYTHON), "-c", _FEAST_SCRIPT, target, str(path), str(iterations)],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output")
            measured = json.loads(done.stdout.strip().splitlines()[-1])
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as err:
            return [
                {
                    "metric": "Feast get_online_features (peer)",
                    "value": "not measured",
                    "unit": "",
                    "target": None,
                    "note": f"{type(err).__name__}: {err}",
                }
            ]
    rows = []
    for batch in (1, 100):
        figures = measured[str(batch)]
        note = f"Feast {measured['feast']}, in-process SDK, {figures['calls']} calls, same values and Redis"
        label = f"Feast get_online_features {batch} {'entity' if batch == 1 else 'entities'} × 50 (peer)"
        for q in ("p50", "p99"):
            rows.append(
                {"metric": f"{label} {q}", "value": round(figures[q], 3), "unit": "ms", "target": None, "note": note}
            )
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Register the synthetic model, fill Redis, start the server, load it at RATE rps; then Feast."""
    from common.settings import Paths
    from common.tracking import configure

    entities = 2_000 if quick else 10_000
    usecase = f"benchserve{os.getpid()}"
    home = Path(tempfile.mkdtemp(prefix="loom-bench-serving-"))
    work = Paths(home)
    saved_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    rows: list[dict[str, Any]] = [machine_load_row("; other jobs on this machine inflate the tail")]
    process = None
    try:
        configure(work)
        spec = _register_model(work, usecase)
        with configured_or_throwaway() as url:
            keys, values = _fill(url, spec, entities)
            try:
                rows += _in_process(spec, url, keys, 300 if quick else 3000)
                api_key = secrets.token_hex(24)  # this run's throwaway key
                process, port, _ = _start_server(home, url, api_key, max_batch=100, usecase=usecase)
                http, scored = _http_rows(port, api_key, keys, quick)
                rows += http
                process.terminate()  # a clean shutdown: the prediction log writes what is still queued
                process.wait(timeout=30)
                process = None
                rows.append(_prediction_log_row(work, usecase, scored))
                rows += _feast_rows(url, values, quick)
            finally:
                from common.redis_server import connect

                client = connect(url)  # leave a shared Redis ($REDIS_URL) as we found it
                found = list(client.scan_iter(match=f"loom:{usecase}:*", count=10_000))
                for start in range(0, len(found), 5_000):
                    client.unlink(*found[start : start + 5_000])
                client.close()
    finally:
        if process is not None:
            process.kill()
        if saved_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri
        else:
            os.environ.pop("MLFLOW_TRACKING_URI", None)  # configure() exported the throwaway store
        shutil.rmtree(home, ignore_errors=True)
    return rows
