"""`loom materialize`: the offline feature history, as of a time, published into a real Redis
through the streaming job's writer and its event-time guard (issue 19, item 7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pyspark.sql import functions as F

from common.compile.plan import FEATURE_TS
from common.features.online_sink import open_store
from common.features.publish import materialize


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    """30 generated customers over 2 days: ingested and backfilled by `loom backfill` (its printed summary
    kept); no stream, so Redis starts empty."""
    import contextlib
    import io
    from types import SimpleNamespace

    from common.compile import compile_usecase
    from common.generate import GenerateOptions, generate_landing
    from common.ingest.stream import ingest_source
    from common.settings import Paths
    from common.spec import load_usecase
    from jobs.cli import main

    work = Paths(tmp_path_factory.mktemp("materialize-home"))
    spec = load_usecase("churn")
    plan = compile_usecase(spec)
    generate_landing(spec, work, GenerateOptions(customers=30, days=2, seed=19, malformed_rate=0.0, late_rate=0.0))
    # the sources the feature groups read (events, customers); the labels (outcomes) feed no feature
    groups = list(plan.groups.values())
    read = {g.source for g in groups} | {j.source for g in groups for j in g.joins}
    for source in sorted(read):
        ingest_source(spark, spec, source, work)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setenv("LOOM_HOME", str(work.home))
        assert main(["backfill", "--usecase", "churn"]) == 0
    return SimpleNamespace(work=work, plan=plan, backfill_summary=out.getvalue())


def test_the_backfill_summary_prints_the_dates_it_wrote(spark, lake):
    """Issue 19, item 9: the range column printed the literal text `start .. end`."""
    lines = {line.split()[0]: line for line in lake.backfill_summary.splitlines()[1:]}
    assert sorted(lines) == sorted(lake.plan.groups), lake.backfill_summary
    for name, line in lines.items():
        dates = spark.read.format("delta").load(lake.work.table("churn", "features", name)).select("_date")
        first, last = dates.agg(F.min("_date"), F.max("_date")).first()
        assert f"{first.isoformat()} .. {last.isoformat()}" in line, line
    assert "start" not in lake.backfill_summary


def _latest(spark, lake, group_name: str, at: datetime) -> dict[str, tuple[datetime, list[float]]]:
    group = lake.plan.group(group_name)
    rows = (
        spark.read.format("delta")
        .load(lake.work.table(lake.plan.usecase, "features", group_name))
        .where(F.col(FEATURE_TS) <= F.lit(at))
        .collect()
    )
    latest: dict[str, tuple[datetime, list[float]]] = {}
    for row in rows:
        key, ts = row[group.entity_key], row[FEATURE_TS]
        if key not in latest or ts > latest[key][0]:
            latest[key] = (ts, [row[name] for name in group.feature_names])
    return latest


def _stored(lake, redis_url, group_name: str, keys: list[str]):
    store = open_store([lake.plan.group(group_name)], redis_url)
    try:
        return store.read(keys, [group_name])
    finally:
        store.close()


def test_every_online_group_is_published_as_of_now(spark, redis_client, redis_url, lake):
    now = datetime.now(UTC)
    reports = {r.group: r for r in materialize(spark, lake.work, lake.plan, now, redis_url)}
    assert sorted(reports) == sorted(g.name for g in lake.plan.groups.values() if g.online)
    for name, report in reports.items():
        expected = _latest(spark, lake, name, now)
        assert report.entities == len(expected) >= 25, name
        assert (report.written, report.skipped) == (len(expected), 0), "the store was empty"
        stored = _stored(lake, redis_url, name, sorted(expected))
        for key, (ts, values) in expected.items():
            vector = stored[(key, name)]
            assert vector.event_time.replace(tzinfo=None) == ts, (name, key)
            np.testing.assert_allclose(vector.values, np.array(values, dtype=float), equal_nan=True)


def test_at_an_earlier_time_publishes_the_older_vectors_and_the_guard_keeps_newer_ones(
    spark, redis_client, redis_url, lake
):
    expected_now = _latest(spark, lake, "activity", datetime.now(UTC))
    first = min(ts for ts, _ in expected_now.values())
    at = first + (max(ts for ts, _ in expected_now.values()) - first) / 2
    [early] = materialize(spark, lake.work, lake.plan, at.replace(tzinfo=UTC), redis_url, ["activity"])
    expected_then = _latest(spark, lake, "activity", at)
    assert early.entities == len(expected_then) and early.written == len(expected_then)
    assert early.newest is not None and early.newest <= at
    moved = [k for k in expected_then if expected_then[k][0] != expected_now[k][0]]
    assert moved, "the data has entities with events after the chosen time"
    stored = _stored(lake, redis_url, "activity", moved)
    assert all(stored[(k, "activity")].event_time.replace(tzinfo=None) == expected_then[k][0] for k in moved)

    # now the newer vectors; then the older ones again: the event-time guard skips them
    [late] = materialize(spark, lake.work, lake.plan, datetime.now(UTC), redis_url, ["activity"])
    assert late.written == len(expected_now)
    [again] = materialize(spark, lake.work, lake.plan, at.replace(tzinfo=UTC), redis_url, ["activity"])
    assert again.skipped == len(moved) and again.written == len(expected_then) - len(moved)
    stored = _stored(lake, redis_url, "activity", moved)
    assert all(stored[(k, "activity")].event_time.replace(tzinfo=None) == expected_now[k][0] for k in moved)


def test_the_cli_prints_what_it_wrote_per_group(spark, redis_client, redis_url, lake, monkeypatch, capsys):
    from jobs.cli import main

    monkeypatch.setenv("LOOM_HOME", str(lake.work.home))
    monkeypatch.setenv("REDIS_URL", redis_url)
    at = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert main(["materialize", "--usecase", "churn", "--group", "profile", "--at", at]) == 0
    out = capsys.readouterr().out
    expected = len(_latest(spark, lake, "profile", datetime.now(UTC) + timedelta(days=1)))
    [line] = [line for line in out.splitlines() if line.startswith("profile ")]
    assert line.split()[3:5] == [str(expected), str(expected)], out  # entities, written
    assert "activity" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group", "nope"], "unknown feature group(s) ['nope']"),
        (["--at", "yesterday"], "is not a time"),
    ],
)
def test_bad_arguments_are_one_message(args, message, capsys):
    from jobs.cli import main

    try:
        code = main(["materialize", "--usecase", "churn", *args])
    except SystemExit as exit_:  # argparse rejects a bad --at itself
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_group_without_history_names_the_backfill(spark, tmp_path, redis_url):
    from common.compile import compile_usecase
    from common.errors import DataError
    from common.settings import Paths
    from common.spec import load_usecase

    plan = compile_usecase(load_usecase("churn"))
    with pytest.raises(DataError, match="loom backfill --usecase churn"):
        materialize(spark, Paths(tmp_path), plan, datetime.now(UTC), redis_url, ["profile"])


def test_serve_warns_at_start_when_a_models_groups_have_no_online_vector(
    spark, redis_client, redis_url, lake, monkeypatch, caplog
):
    import logging
    import os

    import uvicorn

    from jobs import serve
    from jobs.runner import main_for

    monkeypatch.setattr(os, "environ", dict(os.environ))  # the job exports its settings for the workers
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)  # the check runs before the server
    monkeypatch.setenv("LOOM_API_KEYS", "ops:" + "k" * 32)
    monkeypatch.setenv("REDIS_URL", redis_url)
    with caplog.at_level(logging.WARNING, logger="jobs.serve"):
        assert main_for("serve", serve, ["--usecase", "churn", "--workers", "1"]) == 0
    warned = [r.getMessage() for r in caplog.records if "holds no vector" in r.getMessage()]
    assert len(warned) == 2 and all("loom materialize --usecase churn" in m for m in warned), warned

    materialize(spark, lake.work, lake.plan, datetime.now(UTC), redis_url, ["profile"])
    assert serve.warn_on_empty_online_groups(lake.plan, ["churn"], redis_url) == ["activity"]
    materialize(spark, lake.work, lake.plan, datetime.now(UTC), redis_url, ["activity"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jobs.serve"):
        assert serve.warn_on_empty_online_groups(lake.plan, ["churn"], redis_url) == []
    assert not caplog.records
