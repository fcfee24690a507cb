"""The REST service's prediction log: off the request path, nothing lost at shutdown, concurrent appends.

Real components: the churn model of ``trained_churn``, a real Redis filled as in
tests/test_serving.py (its fixtures are reused), FastAPI's TestClient over the
real app, real Delta tables written by delta-rs and read back with Spark. The
REST table of the churn work folder is shared with tests/test_serving.py, so
each test uses an API key name of its own and counts only that client's rows.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from pyspark.sql import functions as F

from common.compile.event_time import to_micros
from common.lake.paths import predictions_path
from common.serving.app import create_app
from common.serving.auth import ApiKeys
from common.serving.config import ServingConfig
from common.serving.prediction_log import PredictionLogger
from common.serving.prediction_rows import LoggedRequest
from common.serving.prediction_sink import DeltaPredictionSink, PredictionSink
from common.serving.prediction_spool import SPOOL_FOLDER
from tests.conftest import REPO
from tests.test_serving import AT, _keys, latest_rows, online_url  # noqa: F401 - fixtures reused

NO_REDIS = "redis://127.0.0.1:1/0"  # never connected to: these apps are built, not started
COLUMNS = {
    "customer_id": "string",
    "prediction_ts": "timestamp",
    "score": "double",
    "model_name": "string",
    "model_version": "int",
    "alias": "string",
    "known": "boolean",
    "missing": "array<string>",
    "request_id": "string",
    "client": "string",
    "logged_at": "timestamp",
}


@contextmanager
def _serving(work, url: str, sink: PredictionSink | None = None, **settings):
    """The real app with a fresh API client; yields (TestClient, headers, client name). Exit = clean shutdown."""
    name = f"logtest-{uuid.uuid4().hex[:8]}"
    key = f"k{uuid.uuid4().hex}"  # a test key, not a secret
    config = ServingConfig(models=("churn",), usecase="churn", redis_url=url, **settings)
    app = create_app(config, work=work, keys=ApiKeys.parse(f"{name}:{key}"), clock=lambda: AT, prediction_sink=sink)
    with TestClient(app) as client:
        yield client, {"X-API-Key": key}, name


def _predict(client, headers, keys, **extra):
    response = client.post(
        "/v1/models/churn/predict", json={"entities": [{"customer_id": k} for k in keys], **extra}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


class BlockingSink(PredictionSink):
    """Holds its first write until released; records every batch."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.inside = False
        self.batches = []

    def write(self, batch, txn) -> None:
        self.inside = True
        self.entered.set()
        released = self.release.wait(30)
        self.inside = False
        if not released:
            raise TimeoutError("the test never released the sink")
        self.batches.append(batch)


class FailingSink(PredictionSink):
    def __init__(self) -> None:
        self.calls = 0

    def write(self, batch, txn) -> None:
        self.calls += 1
        raise OSError("the lake is unreachable (test)")


def test_requests_never_wait_for_the_prediction_log(trained_churn, online_url, latest_rows):  # noqa: F811
    sink = BlockingSink()
    keys = _keys(latest_rows, 3)
    requests = 40
    with _serving(trained_churn.work, online_url, sink, log_flush_s=0.05) as (api, headers, _):
        ids = [_predict(api, headers, keys).headers["x-request-id"]]
        assert sink.entered.wait(10), "the logger never wrote"
        started = time.monotonic()
        ids += [_predict(api, headers, keys).headers["x-request-id"] for _ in range(requests)]
        elapsed = time.monotonic() - started
        # every request answered while the sink was still stuck in its first write
        assert sink.inside and not sink.batches, "the sink returned: the requests may have waited for it"
        assert elapsed < 10, f"{requests} requests took {elapsed:.1f}s"
        # errors are not logged
        assert api.post("/v1/models/churn/predict", json={"entities": []}, headers=headers).status_code == 422
        assert api.post("/v1/models/churn/predict", json={"entities": [{"customer_id": "C1"}]}).status_code == 401
        pinned = api.post(
            "/v1/models/churn/predict", json={"entities": [{"customer_id": "C1"}], "version": 99}, headers=headers
        )
        assert pinned.status_code == 404
        text = api.get("/metrics", headers=headers).text
        assert _metric(text, "loom_serving_predictions_logged_total") == (requests + 1) * len(keys)
        assert _metric(text, "loom_serving_predictions_written_total") == 0
        assert api.app.state.prediction_log.pending_rows == (requests + 1) * len(keys)
        sink.release.set()
    # the shutdown wrote everything that was queued
    rows = [row for batch in sink.batches for row in batch.to_pylist()]
    assert len(rows) == (requests + 1) * len(keys)
    assert sorted({row["request_id"] for row in rows}) == sorted(ids) and len(set(ids)) == requests + 1
    assert {row["customer_id"] for row in rows} == set(keys)
    text = api.app.state.metrics.render().decode()
    assert _metric(text, "loom_serving_predictions_written_total") == len(rows)
    assert _metric(text, "loom_serving_prediction_log_pending") == 0


def test_clean_shutdown_flushes_every_prediction_to_delta(spark, trained_churn, online_url, latest_rows):  # noqa: F811
    from common.monitoring.sources import read_predictions

    work = trained_churn.work
    table = predictions_path(work, "churn", "rest")
    keys = [*_keys(latest_rows, 4), "C99999999"]  # the last one is unknown online
    answers = {}
    with _serving(work, online_url, log_flush_s=0.2) as (api, headers, name):
        for n in range(12):
            extra = {"version": 1} if n == 0 else {}  # an explicit version: alias null
            response = _predict(api, headers, keys, **extra)
            answers[response.headers["x-request-id"]] = response.json()
    # after the shutdown: exactly one row per entity of every answered request
    rest = spark.read.format("delta").load(table)
    assert dict(rest.dtypes) == COLUMNS
    mine = rest.where(F.col("client") == name)
    rows = mine.withColumn("ts_us", F.unix_micros("prediction_ts")).collect()
    assert len(rows) == 12 * len(keys)
    assert {r["request_id"] for r in rows} == set(answers)
    for r in rows:
        body = answers[r["request_id"]]
        expected = next(p for p in body["predictions"] if p["key"] == r["customer_id"])
        assert r["score"] == expected["score"] and r["known"] is expected["known"]
        assert r["missing"] == expected["missing"]
        assert (r["model_name"], r["model_version"], r["alias"]) == ("churn", body["version"], body["alias"])
        assert r["ts_us"] == to_micros(AT)
    assert sum(r["alias"] is None for r in rows) == len(keys)
    assert not next(r for r in rows if r["customer_id"] == "C99999999")["known"]
    # what the evaluation reads: every scored row of the table, tagged path "rest"
    found = read_predictions(spark, work, "churn", "churn", "customer_id", paths=("rest",))
    assert found.found == {"rest": table}
    evaluated = found.frame
    assert evaluated.where(F.col("path") != "rest").count() == 0
    assert evaluated.count() == rest.where((F.col("model_name") == "churn") & F.col("score").isNotNull()).count()
    ours = evaluated.join(mine.select("customer_id", "score").distinct(), ["customer_id", "score"], "inner")
    assert ours.select("customer_id").distinct().count() == len(keys)


def test_rows_the_sink_refuses_at_shutdown_are_spooled_and_appended_at_the_next_start(
    spark,
    trained_churn,
    online_url,  # noqa: F811
    latest_rows,  # noqa: F811
    caplog,
    tmp_path,
):
    work = trained_churn.work
    table = predictions_path(work, "churn", "rest")
    spool = Path(table) / SPOOL_FOLDER
    keys = _keys(latest_rows, 3)
    failing = FailingSink()
    caplog.set_level(logging.INFO, logger="common.serving.prediction_log")
    with _serving(work, online_url, failing, log_flush_s=0.05) as (api, headers, name):
        ids = {_predict(api, headers, keys).headers["x-request-id"] for _ in range(4)}
    logger = api.app.state.prediction_log
    assert failing.calls >= 3 and logger.written_rows == 0 and logger.lost_rows == 0
    files = logger.spool_files
    assert files and all(f.parent == spool and f.exists() for f in files)
    spooled = [row for f in files for row in pq.read_table(f).to_pylist()]
    assert len(spooled) == 4 * len(keys) == logger.spooled_rows
    assert {r["request_id"] for r in spooled} == ids and {r["client"] for r in spooled} == {name}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(str(f) in message for message in errors for f in files), errors  # the error names the files
    text = api.app.state.metrics.render().decode()
    assert _metric(text, "loom_serving_predictions_spooled_total") == len(spooled)
    assert _metric(text, "loom_serving_prediction_log_errors_total") >= 3

    # a crash right after appending a file, before deleting it, must not append it twice
    kept = tmp_path / "kept"
    kept.mkdir()
    for f in files:
        shutil.copy(f, kept / f.name)
    with _serving(work, online_url) as (restarted, _, _):
        pass  # the next start appends the spool, with no request at all
    assert restarted.app.state.prediction_log.recovered_rows >= len(spooled)
    assert not any(f.exists() for f in files)
    for f in files:
        shutil.copy(kept / f.name, f)
    again = PredictionLogger(DeltaPredictionSink(table), spool_dir=spool)
    again.start()
    again.close()
    assert again.recovered_rows == 0 and not any(f.exists() for f in files)

    recovered = spark.read.format("delta").load(table).where(F.col("client") == name)
    assert recovered.count() == len(spooled)
    assert {r[0] for r in recovered.select("request_id").distinct().collect()} == ids


class HeldDelta(DeltaPredictionSink):
    """The real Delta sink, whose writes wait until released (a lake that hangs)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, batch, txn) -> None:
        self.entered.set()
        self.release.wait(30)
        super().write(batch, txn)


def _request(i: int, client: str = "unit") -> LoggedRequest:
    keys = [f"C{i:08d}", f"C{i + 1:08d}"]
    return LoggedRequest(
        f"{client}-{i}",
        to_micros(AT),
        client,
        "churn",
        1,
        None,
        "customer_id",
        keys,
        np.array([0.1, 0.9]),
        {},
        [[], []],
    )


class SlowSink(PredictionSink):
    """Records every batch; each write takes ``seconds`` (a commit's fixed cost)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.batches = []

    def write(self, batch, txn) -> None:
        time.sleep(self.seconds)
        self.batches.append(batch)


def test_a_steady_stream_is_written_once_per_interval_not_without_pause():
    """Requests that keep coming while a write runs wait for the next interval: the writer must not chase
    the queue (it did: dozens of small commits a second per worker under load). Nothing is lost."""
    sink = SlowSink(0.02)
    interval, feeding = 0.5, 2.0
    logger = PredictionLogger(sink, flush_interval_s=interval)
    logger.start()
    sent, stop = 0, time.monotonic() + feeding
    while time.monotonic() < stop:
        logger.log(_request(sent))
        sent += 1
        time.sleep(0.002)
    during = len(sink.batches)
    logger.close()
    # about feeding / interval writes while the stream ran (a few more under load), never one per 20 ms write
    assert 1 <= during <= feeding / interval + 2, [b.num_rows for b in sink.batches]
    ids = [row["request_id"] for batch in sink.batches for row in batch.to_pylist()]
    assert len(ids) == 2 * sent and set(ids) == {f"unit-{i}" for i in range(sent)}
    assert (logger.written_rows, logger.spooled_rows, logger.lost_rows) == (2 * sent, 0, 0)


def test_a_hung_write_at_shutdown_is_spooled_and_loaded_exactly_once(spark, tmp_path, caplog):
    """close() gives up on a write that hangs and spools everything, the hung batch included; if that
    write commits after all, loading the spool skips its copy (its Delta txn says it landed)."""
    table = str(tmp_path / "rest")
    spool = tmp_path / "rest" / SPOOL_FOLDER
    held = HeldDelta(table)
    logger = PredictionLogger(held, spool_dir=spool, flush_interval_s=0.02, close_timeout_s=0.5)
    logger.start()
    logger.log(_request(0))
    assert held.entered.wait(10)
    for i in range(1, 6):
        logger.log(_request(i))
    started = time.monotonic()
    logger.close()
    assert time.monotonic() - started < 5, "close() waited for the hung write"
    assert (logger.spooled_rows, logger.lost_rows, logger.written_rows) == (12, 0, 0)
    assert len(logger.spool_files) == 2  # the hung batch and the rest
    held.release.set()
    logger._thread.join(10)  # the hung write commits late: its 2 rows land
    assert not logger._thread.is_alive()
    (spool / "loom-rest-0-0000000001.parquet").write_bytes(b"not parquet")  # a damaged file does not block

    caplog.set_level(logging.INFO, logger="common.serving.prediction_log")
    again = PredictionLogger(DeltaPredictionSink(table), spool_dir=spool)
    again.start()
    again.close()
    assert again.recovered_rows == 10 and not any(f.exists() for f in logger.spool_files)
    assert (spool / "loom-rest-0-0000000001.parquet.unreadable").exists()
    assert "cannot be read" in caplog.text
    rows = spark.read.format("delta").load(table).groupBy("request_id").count().collect()
    assert sorted((r["request_id"], r["count"]) for r in rows) == [(f"unit-{i}", 2) for i in range(6)]


_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from common.serving.prediction_log import PredictionLogger
from common.serving.prediction_rows import LoggedRequest, rows_table
from common.serving.prediction_sink import DeltaPredictionSink, Txn

table, name, go, records = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])


def request(i):
    keys = [f"C{i:08d}", f"C{i + 1:08d}"]
    scores = np.array([0.25, 0.75])
    seen = {"activity": np.array([1, -1])}
    return LoggedRequest(f"{name}-{i}", 1768392000000000, name, "churn", 1, None, "customer_id", keys, scores,
                         seen, [[], ["x"]])


# the first delta-rs write of a process takes a second: warm up elsewhere so that both writers overlap
DeltaPredictionSink(f"{go}.{name}.warmup").write(rows_table([request(-1)]), Txn("warmup", 1))
logger = PredictionLogger(DeltaPredictionSink(table), spool_dir=table + "/_spool", flush_interval_s=0.01)
logger.start()
Path(f"{go}.{name}").touch()
while not go.exists():
    time.sleep(0.005)
for i in range(records):
    logger.log(request(i))
    time.sleep(0.003)
logger.close()
print(logger.written_rows, logger.spooled_rows, logger.lost_rows)
"""


def test_two_processes_append_to_one_table_concurrently(spark, tmp_path):
    """Two uvicorn workers log to the same table: every row of both lands (delta-rs retries lost commits)."""
    table, go, records = str(tmp_path / "rest"), tmp_path / "go", 200
    writers = {
        name: subprocess.Popen(
            [sys.executable, "-c", _WRITER, table, name, str(go), str(records)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("worker-a", "worker-b")
    }
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{name}").exists() for name in writers):
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers.values()), "a writer failed"
        time.sleep(0.02)
    go.touch()
    for name, writer in writers.items():
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        assert out.split() == [str(2 * records), "0", "0"], (name, out, err)

    # Spark (Delta 4) reads what delta-rs wrote: every row of both writers, each request once
    counts = (
        spark.read.format("delta")
        .load(table)
        .groupBy("client")
        .agg(F.count("*").alias("rows"), F.countDistinct("request_id").alias("requests"))
        .collect()
    )
    assert {r["client"]: (r["rows"], r["requests"]) for r in counts} == {
        "worker-a": (2 * records, records),
        "worker-b": (2 * records, records),
    }
    # the commits really interleaved: the writer of each version switches back and forth
    writers_by_version, retries = [], 0
    for commit in sorted((Path(table) / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in commit.read_text().splitlines()]
        for action in actions:
            if "add" in action:
                client = pq.read_table(Path(table) / action["add"]["path"], columns=["client"])[0][0].as_py()
                writers_by_version.append(client)
            if "commitInfo" in action:
                retries += int(action["commitInfo"].get("operationMetrics", {}).get("num_retries", 0))
    switches = sum(a != b for a, b in pairwise(writers_by_version))
    print(f"{len(writers_by_version)} commits, {switches} writer switches, {retries} commit retries")
    assert switches >= 2, writers_by_version


def test_settings_turn_the_log_off_and_set_its_interval(tmp_path):
    from common.errors import ConfigError
    from jobs import serve

    config = ServingConfig.from_env({"LOOM_SERVE_MODELS": "churn", "LOOM_SERVE_USECASE": "churn"})
    assert config.log_predictions and config.log_flush_s == 5.0
    off = ServingConfig(models=("churn",), usecase="churn", log_predictions=False, log_flush_s=0.5)
    assert ServingConfig.from_env(off.to_env()) == off
    off = ServingConfig(models=("churn",), usecase="churn", log_predictions=False, redis_url=NO_REDIS)
    with pytest.raises(ConfigError, match="LOOM_SERVE_LOG_PREDICTIONS='maybe'"):
        ServingConfig.from_env({"LOOM_SERVE_MODELS": "churn", "LOOM_SERVE_LOG_PREDICTIONS": "maybe"})
    with pytest.raises(ConfigError, match="LOOM_SERVE_LOG_FLUSH_S"):
        ServingConfig(models=("churn",), log_flush_s=0)
    keys = ApiKeys.parse(f"t:k{uuid.uuid4().hex}")
    assert create_app(off, keys=keys, work=None).state.prediction_log is None
    nameless = ServingConfig(models=("churn",), redis_url=NO_REDIS)
    assert create_app(nameless, keys=keys).state.prediction_log is None  # no use case: no table to name

    import argparse

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["--usecase", "churn", "--no-log-predictions", "--log-flush-seconds", "2"])
    assert (args.log_predictions, args.log_flush_seconds) == (False, 2.0)
    assert parser.parse_args(["--usecase", "churn"]).log_predictions is True


def test_rows_hold_scores_and_names_but_no_feature_values():
    record = LoggedRequest(
        "r1",
        to_micros(AT),
        "screen",
        "churn",
        3,
        "champion",
        "customer_id",
        ["C1", 42],
        np.array([0.5, np.nan]),
        {"activity": np.array([5, -1]), "profile": np.array([-1, -1])},
        [["tenure_days"], ["a", "b"]],
    )
    from common.serving.prediction_rows import rows_table

    rows = rows_table([record]).to_pylist()
    assert [r["customer_id"] for r in rows] == ["C1", "42"]  # keys as strings, as sent
    assert [r["score"] for r in rows] == [0.5, None] and [r["known"] for r in rows] == [True, False]
    assert [r["missing"] for r in rows] == [["tenure_days"], ["a", "b"]]
    assert set(rows[0]) == set(COLUMNS)


def test_rows_of_many_requests_for_two_models_keep_request_order(monkeypatch):
    """Requests of two models (other entity key, other feature groups), built in several slices: each
    row carries its own request's values, its own key column (null in the other's) and its own groups'
    ``known``, in request order."""
    from common.serving import prediction_rows

    monkeypatch.setattr(prediction_rows, "ROWS_PER_SLICE", 3)  # 7 requests: slices of 3, 3, 1
    records = []
    for i in range(7):
        churn = i % 3 != 1
        n = 1 + i % 2
        stamps = np.array([(-1 if (i + row) % 2 else 10) for row in range(n)])
        records.append(
            LoggedRequest(
                f"r{i}",
                1768392000000000 + i,
                "c",
                "churn" if churn else "upsell",
                i,
                "champion" if churn else None,
                "customer_id" if churn else "account_id",
                [f"K{i}-{row}" for row in range(n)] if churn else list(range(100 * i, 100 * i + n)),
                np.arange(n, dtype="float64") + i,
                {"activity": stamps, "profile": np.full(n, -1)} if churn else {"usage": stamps},
                [[f"m{i}"]] * n,
            )
        )
    rows = prediction_rows.rows_table(records, logged_at_us=5).to_pylist()

    expected = []
    for r in records:
        for row, key in enumerate(r.keys):
            mine, other = (
                ("customer_id", "account_id") if r.entity_key == "customer_id" else ("account_id", "customer_id")
            )
            expected.append(
                (
                    r.request_id,
                    r.model,
                    r.version,
                    r.alias,
                    str(key),
                    None,
                    r.scores[row],
                    r.missing[row],
                    any(stamps[row] >= 0 for stamps in r.event_times_us.values()),
                    mine,
                    other,
                )
            )
    got = [
        (
            x["request_id"],
            x["model_name"],
            x["model_version"],
            x["alias"],
            x[mine],
            x[other],
            x["score"],
            x["missing"],
            x["known"],
            mine,
            other,
        )
        for x, (*_, mine, other) in zip(rows, expected, strict=True)
    ]
    assert got == expected
    assert {x["logged_at"].timestamp() for x in rows} == {5e-6}
    assert [x["prediction_ts"] for x in rows] == sorted(x["prediction_ts"] for x in rows)
