"""End to end on real Delta and Redis: generated landing files go through the
streaming job in several micro-batches (late and out-of-order events included)
and through the batch backfill; every entity and feature agrees."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
from pyspark.sql import functions as F

from common.compile import compile_usecase
from common.features import offline
from common.features.backfill import backfill
from common.features.consistency import check_group
from common.features.online_sink import open_store
from common.generate import GenerateOptions, generate_landing
from common.pipeline import catch_up
from common.runtime.redis_server import connect
from common.settings import Paths
from common.spec import load_usecase


@pytest.fixture(scope="module")
def pipeline(spark, redis_url, tmp_path_factory):
    work = Paths(Path(tmp_path_factory.mktemp("pipeline-home")))
    spec = load_usecase("churn")
    plan = compile_usecase(spec)
    summary = generate_landing(spec, work, GenerateOptions(customers=40, days=3, seed=11, late_rate=0.05))
    # the worker's Redis is shared by every module it runs: a vector another world left under the same customer
    # id with a newer event time would make the stream's guarded write skip this world's (a real mismatch)
    connect(redis_url).flushdb()
    # ingest and features only: no test here reads the trigger query's firings (test_triggers.py and the
    # retraining loop do), and with no model trained it would only add a stateful query of its own
    reports = catch_up(spark, plan, work, redis_url, max_files_per_trigger=12, parts=("ingest", "features"))
    return work, plan, summary, {r.source: r for r in reports}


def test_stream_and_batch_agree_on_every_entity_and_feature(spark, redis_url, pipeline):
    work, plan, _, _ = pipeline
    store = open_store(list(plan.groups.values()), redis_url)
    try:
        for group in plan.groups.values():
            report = check_group(spark, work, group, store)
            assert report.entities_checked >= 30, group.name
            assert report.ok, (group.name, report.examples)
            assert report.behind == 0, "the stream processed every bronze event"
    finally:
        store.close()


def test_the_stream_ran_several_micro_batches(spark, pipeline):
    work, plan, _, reports = pipeline
    assert reports["events"].batches >= 3
    assert offline.read_history(spark, work, plan.group("activity")).count() > 0


def _history_engines(path: str) -> list[str]:
    """The writer of each commit of a Delta table: ``delta-rs`` (the driver) or ``spark``."""
    import json

    engines = []
    for commit in sorted((Path(path) / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in commit.read_text().splitlines() if line.strip()]
        info = next(a["commitInfo"] for a in actions if "commitInfo" in a)
        engines.append("delta-rs" if "delta-rs" in str(info.get("engineInfo", "")) else "spark")
    return engines


def test_batches_written_from_the_driver_or_by_spark_give_the_same_stores(spark, redis_url, pipeline, tmp_path):
    """A small feature batch is collected to the driver once, which writes Redis and appends the history
    (``common.features.streaming.write_values``); a batch of more than ``DRIVER_ROWS`` entities goes through
    Spark's writers. The module's bronze, two files a batch, both ways: the same history rows, and online
    stores that agree with the batch computation."""
    import shutil

    from common.features import streaming
    from common.lake import append
    from common.lake.paths import history_path

    work, plan, _, _ = pipeline
    runs = {}
    for number, (way, limit) in enumerate((("driver", streaming.DRIVER_ROWS), ("spark", 0))):
        home = Paths(tmp_path / way)
        shutil.copytree(work.lake / "churn" / "bronze", home.lake / "churn" / "bronze")
        url = urlunparse(urlparse(redis_url)._replace(path=f"/{8 + number}"))  # a database of its own
        connect(url).flushdb()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(streaming, "DRIVER_ROWS", limit)
            patch.setattr(append, "DRIVER_ROWS", limit)  # the history append's own limit
            catch_up(spark, plan, home, url, max_files_per_trigger=2, parts=("features",))
        runs[way] = home, url
    activity = history_path(runs["driver"][0], plan.group("activity"))
    engines = _history_engines(activity)
    assert engines[0] == "spark" and engines.count("delta-rs") >= 2, engines  # Spark creates the table
    assert set(_history_engines(history_path(runs["spark"][0], plan.group("activity")))) == {"spark"}
    for group in plan.groups.values():
        by_driver, by_spark = (
            offline.load_history(spark, history_path(home, group)).drop(offline.WRITE_ORDER)
            for home, _ in runs.values()
        )
        assert by_driver.count() > 0, group.name
        assert by_spark.exceptAll(by_driver).isEmpty() and by_driver.exceptAll(by_spark).isEmpty(), group.name
    for home, url in runs.values():
        assert_every_group_agrees_with_batch(spark, home, plan, url)


def assert_every_group_agrees_with_batch(spark, work: Paths, plan, url: str) -> None:
    """Every group's online vectors (at ``url``) equal the batch computation from ``work``'s bronze at their time:
    at least 30 entities, 0 mismatches, none behind."""
    store = open_store(list(plan.groups.values()), url)
    try:
        for group in plan.groups.values():
            report = check_group(spark, work, group, store)
            assert report.entities_checked >= 30 and report.ok and report.behind == 0, (group.name, report.examples)
    finally:
        store.close()


def test_a_changed_feature_value_is_caught(spark, redis_url, pipeline):
    """The check is not vacuous: corrupt one online vector and it must fail."""
    work, plan, _, _ = pipeline
    group = plan.group("activity")
    store = open_store([group], redis_url)
    try:
        entity = sorted(
            r[0]
            for r in offline.read_history(spark, work, group).select(group.entity_key).distinct().limit(1).collect()
        )[0]
        vector = store.read([entity], [group.name])[(entity, group.name)]
        values = vector.values.copy()
        values[0] += 1.0
        store.write(group.name, [entity], values.reshape(1, -1), [vector.event_time_us])
        report = check_group(spark, work, group, store)
        assert not report.ok
        assert report.features[group.feature_names[0]].mismatches == 1
        values[0] -= 1.0
        store.write(group.name, [entity], values.reshape(1, -1), [vector.event_time_us])
    finally:
        store.close()


def test_backfill_history_matches_what_the_stream_wrote(spark, pipeline):
    work, plan, _, _ = pipeline
    group = plan.group("activity")
    streamed = offline.read_history(spark, work, group).select(group.entity_key, "feature_ts", *group.feature_names)
    streamed = streamed.collect()
    reports = backfill(spark, work, plan, ["activity"])
    assert reports[0].rows > len(streamed), "the backfill has a row per event time, the stream one per batch"
    # the full history, collected once (a few thousand rows) and looked up by (entity, feature_ts), where a
    # Spark query a row cost about a second each
    full: dict[tuple, list] = {}
    for row in offline.read_history(spark, work, group).collect():
        full.setdefault((row[group.entity_key], row["feature_ts"]), []).append(row)
    for row in streamed[:50]:
        match = full.get((row[group.entity_key], row["feature_ts"]), [])
        assert len(match) == 1
        for name in group.feature_names:
            a, b = row[name], match[0][name]
            assert (a is None and b is None) or abs(a - b) <= 1e-9 * max(1.0, abs(a)), name


def test_backfill_again_changes_nothing(spark, pipeline):
    work, plan, _, _ = pipeline
    group = plan.group("activity")
    before = offline.read_history(spark, work, group).count()
    again = backfill(spark, work, plan, ["activity"])
    assert again[0].skipped, "nothing was ingested since the last backfill"
    assert offline.read_history(spark, work, group).count() == before


def test_consistency_job_exit_codes(spark, redis_url, pipeline, monkeypatch, capsys):
    """`loom consistency` prints the report and exits 1 on a mismatch, 0 otherwise."""
    import jobs.consistency as job
    from jobs.runner import main_for

    work, plan, _, _ = pipeline
    monkeypatch.setenv("LOOM_HOME", str(work.home))
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main_for("consistency", job, ["--usecase", "churn"]) == 0
    out = capsys.readouterr().out
    assert "group activity:" in out and "0 mismatched" in out and "consistency: OK" in out

    group = plan.group("profile")
    store = open_store([group], redis_url)
    try:
        entity = "C00000001"
        vector = store.read([entity], [group.name])[(entity, group.name)]
        changed = vector.values.copy()
        changed[-1] = 1800.0
        store.write(group.name, [entity], changed.reshape(1, -1), [vector.event_time_us])
        assert main_for("consistency", job, ["--usecase", "churn"]) == 1
        out = capsys.readouterr().out
        assert "consistency: FAILED" in out
        assert f"{entity}.{group.feature_names[-1]}" in out
    finally:
        store.write(group.name, [entity], vector.values.reshape(1, -1), [vector.event_time_us])
        store.close()


def _land_events(work: Paths, name: str, events: list[dict]) -> None:
    import json

    folder = work.landing / "churn" / "events"
    (folder / name).write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")


@pytest.mark.slow
def test_late_events_within_and_beyond_the_state_horizon(spark, redis_url, pipeline):
    """docs/time-semantics.md, "Late and out-of-order data": a late event within the longest window of the entity's newest event updates the
    online vector exactly; an older one changes no online value, lands in bronze, and the backfill (the
    documented path) counts it in the offline history. Consistency has 0 mismatches after both."""
    from datetime import timedelta

    work, plan, _, _ = pipeline
    group = plan.group("activity")
    store = open_store([group], redis_url)
    try:
        entity = "C00000003"
        before = store.read([entity], [group.name])[(entity, group.name)]
        newest = pd_timestamp(before.event_time_us)
        calls = group.feature_names.index("support_calls_30d")
        within = newest - timedelta(hours=5)
        beyond = newest - timedelta(days=31)
        event = {"customer_id": entity, "event_type": "support_call", "amount": None, "duration_s": 60.0}
        _land_events(
            work,
            "late-events.json",
            [
                dict(event, event_id="LATE-WITHIN", ts=within.strftime("%Y-%m-%dT%H:%M:%SZ"), channel="chat"),
                dict(event, event_id="LATE-BEYOND", ts=beyond.strftime("%Y-%m-%dT%H:%M:%SZ"), channel="web"),
            ],
        )
        reports = {r.source: r for r in catch_up(spark, plan, work, redis_url, parts=["ingest", "features"])}
        assert reports["events"].accepted == 2

        after = store.read([entity], [group.name])[(entity, group.name)]
        assert after.event_time_us == before.event_time_us, "neither late event is the newest"
        assert after.values[calls] == before.values[calls] + 1.0, "the event within the horizon counts online"
        report = check_group(spark, work, group, store)
        assert report.ok and report.behind == 0, report.examples

        backfill(spark, work, plan, ["activity"])
        history = offline.read_history(spark, work, group).where(F.col(group.entity_key) == entity)
        at_beyond = history.where(F.col("feature_ts") == F.lit(beyond.replace(tzinfo=None))).collect()
        assert len(at_beyond) == 1 and at_beyond[0]["support_calls_30d"] == 1.0, "the backfill counts it offline"
        assert check_group(spark, work, group, store).ok
    finally:
        store.close()


def pd_timestamp(micros: int):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC).replace(microsecond=0)


@pytest.mark.slow
def test_a_late_event_rewrites_a_key_by_append_and_every_reader_takes_it(spark, redis_url, pipeline):
    """Appends only on the hot path (common/features/offline.py): a late event within the horizon that leaves
    the entity's newest event time as it was gives its (entity, feature_ts) a second history row with the new
    values; the history, the point-in-time join and materialize all return those; `compact` leaves one row
    per key and no answer changes; a replayed micro-batch (same app id, same batch id) appends nothing."""
    from datetime import timedelta

    from delta.tables import DeltaTable

    from common.features.compaction import compact
    from common.features.publish import materialize_group
    from common.features.streaming import feature_checkpoint
    from common.lake.paths import history_path
    from common.models.training_set import create_training_set

    work, plan, _, _ = pipeline
    group = plan.group("activity")
    path = history_path(work, group)
    entity = "C00000005"
    store = open_store([group], redis_url)
    try:
        before = store.read([entity], [group.name])[(entity, group.name)]
        newest = pd_timestamp(before.event_time_us).replace(tzinfo=None)
        late = newest - timedelta(hours=2)
        event = {"customer_id": entity, "event_type": "support_call", "amount": None, "duration_s": 30.0}
        _land_events(work, "late-rewrite.json", [dict(event, event_id="LATE-REWRITE", ts=f"{late:%Y-%m-%dT%H:%M:%SZ}")])
        catch_up(spark, plan, work, redis_url, parts=["ingest", "features"])
        after = store.read([entity], [group.name])[(entity, group.name)]
        assert after.event_time_us == before.event_time_us and list(after.values) != list(before.values)
        expected = dict(zip(group.feature_names, after.values, strict=True))

        key = (F.col(group.entity_key) == entity) & (F.col("feature_ts") == F.lit(newest))
        assert offline.load_history(spark, path).where(key).count() == 2, "a second row, appended"

        def answers() -> list[dict]:
            history = offline.read_history(spark, work, group).where(key).collect()
            labels = spark.createDataFrame([(entity, newest)], "customer_id string, label_ts timestamp")
            training = create_training_set(labels, ["activity.*"], plan=plan, work=work, time_column="label_ts")
            # materialize as of `newest` over a stale vector: it must publish the latest write
            store.write(group.name, [entity], before.values.reshape(1, -1), [before.event_time_us - 1])
            materialize_group(spark, work, group, newest, redis_url)
            published = store.read([entity], [group.name])[(entity, group.name)].as_dict()
            return [{n: history[0][n] for n in group.feature_names}, training.frame.first().asDict(), published]

        for found in answers():
            assert _nan(found, expected) == pytest.approx(_nan(expected, expected), nan_ok=True)

        [report] = compact(spark, work, plan, ["activity"])
        assert report.superseded >= 1 and newest.date() in report.dates
        raw = offline.load_history(spark, path)
        assert raw.groupBy(group.entity_key, "feature_ts").count().where("count > 1").count() == 0
        for found in answers():
            assert _nan(found, expected) == pytest.approx(_nan(expected, expected), nan_ok=True)

        # replay the stream's last micro-batch: drop its commit, so the restart runs the same batch id again
        commits = Path(feature_checkpoint(work, group)) / "commits"
        last = max((p for p in commits.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        version = DeltaTable.forPath(spark, path).history(1).first()["version"]
        rows = raw.count()
        last.unlink()
        (commits / f".{last.name}.crc").unlink(missing_ok=True)  # the local file system's checksum of it
        catch_up(spark, plan, work, redis_url, parts=["features"])
        assert (last.exists(), DeltaTable.forPath(spark, path).history(1).first()["version"]) == (True, version)
        assert offline.load_history(spark, path).count() == rows
    finally:
        store.close()


def _nan(values: dict, names) -> list[float]:
    """The values of ``names`` as floats, a missing value (None or NaN) as NaN."""
    return [float("nan") if values[n] is None else float(values[n]) for n in names]
