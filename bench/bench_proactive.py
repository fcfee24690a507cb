"""Proactive scoring on local[2]: the whole streaming pipeline, triggers and @champion scoring included.

Set-up (not timed): a small churn data set is generated, ingested and backfilled,
and the churn model is trained and registered as ``churn@champion`` in the
bench's own work folder (its own MLflow store).

1. **Catch-up throughput.** A second, larger event log with later dates lands;
   ``availableNow`` queries process it part after part, each timed: ingest
   (landing JSON -> bronze + quarantine), features (bronze -> tiles -> Redis +
   Delta history), triggers + scoring (bronze -> stateful trigger operator ->
   features as of each firing -> ``spark_udf`` of churn@champion -> predictions
   and actions Delta + Redis). Features and triggers start from scratch, so they
   process every bronze event (the training data's too); each part's rate is
   over the events it processed, and end to end = 1 / the sum of the parts'
   seconds per event. Full run only, diagnostics: the trigger operator alone
   (noop sink), and one batch's features-as-of-firing and scoring, timed apart.
2. **Freshness.** The pipeline runs continuously (every query of
   ``run_continuously``: ingest, features, triggers, on a 1 s processing-time
   trigger) while a Python thread lands event files at a fixed rate, events
   stamped with the time they are written, with ``outage_report`` ->
   ``support_call`` pairs for some customers so the trigger fires. For each
   firing, freshness = the moment the bench first sees its prediction in Redis
   (polling the prediction keys) - the firing event's time. Firings of the
   first seconds (warm-up) are left out of the percentiles; firings never seen
   count with their wait so far (a lower bound). The full run measures at half
   the catch-up end-to-end rate (what this machine can sustain: the latency
   floor) and at 10,000 events/s; ``--quick`` only at 10,000 events/s, briefly.

The floor query of :mod:`bench.catch_up` runs over the catch-up log's event files first, in the same run:
the catch-up's end to end is reported against it.

Targets (DESIGN.md §4): >= 35,000 events/s end to end and >= 0.4 of the floor; p99 freshness <= 2 s at
10,000 events/s.
The machine is shared with other agents' Spark jobs: the load at start is reported; read the figures with it.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench import local_spark, machine_load_row, throwaway_keys
from bench.batch_log import batch_steps, captured
from bench.catch_up import (
    LOGGERS,
    await_all,
    catch_up,
    catch_up_rows,
    end_to_end,
    floor_query,
    floor_rows,
    prepare_champion,
    shown,
    trigger_batches,
)
from bench.state_cost import operator_cost_rows

NAME = "proactive"
INTERVAL = "1 second"  # processing-time trigger of every query in the freshness run
FILES_PER_TRIGGER = 24  # catch-up micro-batches (full run): a day of hourly landing files
RATE = 10_000  # events/s offered in the freshness run (DESIGN.md §4)
PAIRS_PER_S = 10  # outage_report -> support_call pairs started per second (each fires once)
TICK_S = 0.5  # the writer lands one file per tick
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BACKGROUND = (  # event type, share, channels: everyday events that never complete the trigger
    ("streaming_session", 0.64, ("app", "web")),
    ("device_reboot", 0.20, ("app",)),
    ("payment", 0.15, ("app", "web", "store")),
    ("plan_change", 0.01, ("phone", "web", "store")),
)


def _operator_alone(spark: Any, plan: Any, work: Any, home: Path) -> tuple[int, float]:
    """Bronze events -> the stateful trigger operator -> noop sink: (rows, seconds), no scoring."""
    from common.lake.paths import bronze_path
    from common.runtime.state_store import rocksdb_state_store
    from common.triggers.operator import firings
    from common.triggers.stream import triggers_by_source

    (source, triggers), *_ = triggers_by_source(plan).items()
    path = bronze_path(work, plan.usecase, source)
    rows = spark.read.format("delta").load(path).count()
    started = time.perf_counter()
    events = spark.readStream.format("delta").option("maxFilesPerTrigger", FILES_PER_TRIGGER).load(path)
    writer = (
        firings(events, triggers)
        .writeStream.format("noop")
        .option("checkpointLocation", str(home / "checkpoints" / "bench_operator_alone"))
        .trigger(availableNow=True)
    )
    with rocksdb_state_store(spark):  # transformWithState needs RocksDB
        query = writer.start()
    await_all([query])
    return rows, time.perf_counter() - started


def _scoring_steps(spark: Any, plan: Any, work: Any, batch_id: int) -> dict[str, float]:
    """One trigger batch's firings again, its steps timed apart: features as of each firing, then spark_udf."""
    from pyspark.sql import functions as F

    from common.features.at_times import features_at
    from common.lake.paths import predictions_path
    from common.models import registry
    from common.models.scoring import ModelRef
    from common.triggers.operator import FIRING_TS
    from common.triggers.scoring import ModelResolver

    trigger = next(iter(plan.triggers.values()))
    key = trigger.entity_key
    rows = (
        spark.read.format("delta")
        .load(predictions_path(work, plan.usecase, "stream"))
        .where(F.col("batch_id") == batch_id)
        .select(key, "trigger", FIRING_TS, "event_id")
        .cache()
    )
    firings = rows.count()
    version = registry.version_by_alias(trigger.model, trigger.alias, registry.client(work))
    ref = ModelRef(trigger.model, version, trigger.alias)
    resolver = ModelResolver(work)
    spec = resolver.spec(ref)
    started = time.perf_counter()
    features = features_at(spark, work, plan, spec, rows, FIRING_TS).cache()
    features.count()
    features_s = time.perf_counter() - started
    udf = resolver.udf(spark, ref)
    names = list(spec.lookup_features)
    started = time.perf_counter()
    # a sum, not a count: Spark would prune an unused UDF column
    features.select(udf(*[F.col(c) for c in (key, *names)]).alias("score")).agg(F.sum("score")).first()
    score_s = time.perf_counter() - started
    features.unpersist()
    rows.unpersist()
    return {"firings": firings, "features_s": features_s, "score_s": score_s}


class _LiveWriter(threading.Thread):
    """Lands event JSON files at ``rate`` events/s for ``seconds``, stamped with the time they are written.

    Every tick it starts pairs (an ``outage_report`` now) and completes the previous tick's pairs (a
    ``support_call`` now, strictly later): each completion fires the trigger once, at the call's time.
    """

    def __init__(self, folder: Path, tag: str, customers: list[str], pairs: list[str], rate: float, seconds: float):
        super().__init__(name=f"bench-live-writer-{tag}", daemon=True)
        self.folder, self.tag, self.customers, self.rate, self.seconds = folder, tag, customers, rate, seconds
        self.pair_customers = iter(pairs)  # each customer starts one pair: the trigger's cool-down is a day
        self.pairs_per_s = min(PAIRS_PER_S, rate / 20)
        self.written = 0
        self.files = 0
        self.started_at = 0.0
        self.ended_at = 0.0
        self.error: BaseException | None = None
        self.sequence = 0
        self._pairs: list[tuple[str, int]] = []  # (customer, firing time in µs), once its call has landed
        self._lock = threading.Lock()
        self._rng = random.Random(11)
        self._types = [t for t, _, _ in BACKGROUND]
        self._weights = [w for _, w, _ in BACKGROUND]
        self._channels = {t: c for t, _, c in BACKGROUND}

    def take_pairs(self) -> list[tuple[str, int]]:
        with self._lock:
            taken, self._pairs = self._pairs, []
        return taken

    def _line(self, customer: str, kind: str, stamp: str) -> str:
        self.sequence += 1
        channel = self._rng.choice(self._channels.get(kind, ("phone",)))
        amount = f"{self._rng.uniform(20, 120):.2f}" if kind == "payment" else "null"
        duration = f"{self._rng.uniform(60, 7200):.1f}" if kind in ("streaming_session", "support_call") else "null"
        return (
            f'{{"event_id":"L{self.tag}{self.sequence:012d}","customer_id":"{customer}","event_type":"{kind}",'
            f'"ts":"{stamp}","amount":{amount},"duration_s":{duration},"channel":"{channel}"}}'
        )

    def _land(self, lines: list[str]) -> None:
        name = f"events-live-{self.tag}-{self.files:06d}.json"
        temporary = self.folder / f".{name}.tmp"
        temporary.write_text("\n".join(lines) + "\n")
        os.replace(temporary, self.folder / name)  # appears whole: the file source skips dot files
        self.files += 1
        self.written += len(lines)

    def _tick(self, open_pairs: list[str], new_pairs: int, due: int) -> list[str]:
        ts_us = time.time_ns() // 1000
        stamp = (EPOCH + timedelta(microseconds=ts_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # exactly ts_us
        started = [c for c in (next(self.pair_customers, None) for _ in range(new_pairs)) if c is not None]
        lines = [self._line(c, "outage_report", stamp) for c in started]
        lines += [self._line(c, "support_call", stamp) for c in open_pairs]
        background = max(due - len(lines), 0)
        kinds = self._rng.choices(self._types, self._weights, k=background)
        lines += [self._line(self._rng.choice(self.customers), kind, stamp) for kind in kinds]
        self._land(lines)
        with self._lock:
            self._pairs += [(c, ts_us) for c in open_pairs]
        return started

    def run(self) -> None:
        try:
            self.started_at = time.time()
            open_pairs: list[str] = []
            pair_credit = 0.0
            ticks = 0
            while time.time() - self.started_at < self.seconds:
                pair_credit += self.pairs_per_s * TICK_S
                due = int(self.rate * (time.time() - self.started_at + TICK_S)) - self.written
                open_pairs = self._tick(open_pairs, int(pair_credit), due)
                pair_credit -= int(pair_credit)
                ticks += 1
                time.sleep(max(0.0, self.started_at + ticks * TICK_S - time.time()))
            self._tick(open_pairs, 0, len(open_pairs))  # complete the last pairs
            self.ended_at = time.time()
        except BaseException as error:  # reported by the main thread
            self.error = error
            self.ended_at = time.time()


class _LiveProgress:
    """The progress reports (``durationMs`` per phase) of the live run's micro-batches that had input, per part
    (ingest, features, triggers, by query name): what one small batch costs, phase by phase."""

    def __init__(self) -> None:
        from pyspark.sql.streaming import StreamingQueryListener

        self.reports: dict[str, list[dict[str, int]]] = {"ingest": [], "features": [], "triggers": []}
        reports = self.reports

        class _Listener(StreamingQueryListener):
            def onQueryStarted(self, event) -> None:
                pass

            def onQueryProgress(self, event) -> None:
                progress = event.progress
                if not progress.numInputRows:
                    return
                name = progress.name or ""
                part = "ingest" if "_ingest_" in name else "features" if "_features_" in name else "triggers"
                reports[part].append(dict(progress.durationMs or {}))

            def onQueryIdle(self, event) -> None:
                pass

            def onQueryTerminated(self, event) -> None:
                pass

        self.listener = _Listener()

    def summary(self) -> str:
        """Per part: batches with input, and the median seconds of a batch, of its planning, of ``addBatch``
        (the foreachBatch function) and of the rest (offsets, WAL and commit files)."""
        shown = []
        for part, reports in self.reports.items():
            if not reports:
                continue

            def median(phase: str, reports: list[dict[str, int]] = reports) -> float:
                return float(np.median([r.get(phase, 0) for r in reports])) / 1000

            rest = float(
                np.median(
                    [r.get("triggerExecution", 0) - r.get("queryPlanning", 0) - r.get("addBatch", 0) for r in reports]
                )
            )
            shown.append(
                f"{part} {len(reports)} batches, median {median('triggerExecution'):.2f}s (planning "
                f"{median('queryPlanning'):.2f}s, addBatch {median('addBatch'):.2f}s, rest {rest / 1000:.2f}s)"
            )
        return "; ".join(shown) or "no progress reports"


def _freshness(
    spark: Any,
    plan: Any,
    work: Any,
    url: str,
    writer_args: tuple[str, list[str], list[str], float, float],
    warmup_s: float,
    drain_s: float,
    writer_class: type[_LiveWriter] | None = None,
) -> dict[str, Any]:
    """Run the pipeline continuously, land events at a fixed rate, and time each firing from event to Redis.

    ``writer_args``: tag, customers, pair customers, events/s, seconds (see :class:`_LiveWriter`).
    ``writer_class``: a :class:`_LiveWriter` that sends its events elsewhere (bench/bench_kafka.py: to Kafka).
    """
    from common.features.online_sink import spark_online_writer
    from common.features.streaming import start_feature_streams
    from common.generate.churn import source_folders
    from common.ingest.report import IngestReport
    from common.ingest.stream import start_ingest_stream, stop_gracefully
    from common.online.predictions import prediction_key
    from common.runtime.redis_server import connect
    from common.triggers.stream import features_in_trigger_queries, start_trigger_streams

    spec = plan.spec
    trigger = next(iter(plan.triggers.values()))
    reports = {name: IngestReport(name) for name in spec.sources}
    progress = _LiveProgress()
    spark.streams.addListener(progress.listener)
    queries = [
        start_ingest_stream(spark, spec, name, work, mode="stream", trigger_interval=INTERVAL, report=reports[name])
        for name in spec.sources
    ]
    # as `loom stream` runs them: the trigger queries write the features of the groups their operator folds
    carried = features_in_trigger_queries(plan)
    own = [name for name in plan.groups if name not in carried]
    queries += start_feature_streams(spark, work, plan, spark_online_writer(url), interval=INTERVAL, groups=own)
    queries += start_trigger_streams(
        spark, work, plan, url, interval=INTERVAL, write_features=spark_online_writer(url) if carried else None
    )
    time.sleep(5.0)  # first (empty) micro-batches of every query
    writer = (writer_class or _LiveWriter)(source_folders(spec, work.landing / spec.name)["events"], *writer_args)
    client = connect(url)
    pending: dict[str, int] = {}
    seen: dict[str, tuple[int, float]] = {}  # customer -> (firing µs, freshness s)
    expected = 0
    read_at_start = reports["events"].read
    read_at_stop = None
    writer.start()
    deadline = None
    try:
        while True:
            finished = not writer.is_alive()  # read before taking: pairs landed after it are taken next loop
            for customer, ts_us in writer.take_pairs():
                pending[customer] = ts_us
                expected += 1
            if pending:
                names = list(pending)
                pipe = client.pipeline(transaction=False)
                for customer in names:
                    pipe.hget(prediction_key(plan.usecase, plan.version, customer, trigger.model), "ts_us")
                values = pipe.execute()
                observed = time.time()
                for customer, value in zip(names, values, strict=True):
                    # older predictions of this customer (from the catch-up log) are days old
                    if value is not None and int(value) >= pending[customer] - 1000:
                        seen[customer] = (pending[customer], observed - pending[customer] / 1e6)
                        del pending[customer]
            if finished:
                if read_at_stop is None:
                    read_at_stop = reports["events"].read
                    deadline = time.time() + drain_s
                if writer.error is not None:
                    raise writer.error
                if not pending or time.time() > deadline:
                    break
            if any(not q.isActive for q in queries):
                failed = next(q for q in queries if not q.isActive)
                raise failed.exception() or RuntimeError(f"query {failed.name} stopped")
            time.sleep(0.02)
    finally:
        drained_at = time.time()
        read_at_end = reports["events"].read
        for query in queries:
            if query.isActive:
                stop_gracefully(query, grace_s=10.0)
        client.close()
        time.sleep(1.0)  # the listener bus delivers the last progress reports after the queries stopped
        spark.streams.removeListener(progress.listener)
    duration = writer.ended_at - writer.started_at
    cutoff_us = (writer.started_at + warmup_s) * 1e6
    steady = [f for ts, f in seen.values() if ts >= cutoff_us]
    # firings never seen before the drain deadline count with the wait so far: a lower bound, not dropped
    unseen = [drained_at - ts / 1e6 for ts in pending.values() if ts >= cutoff_us]
    samples = np.asarray(steady + unseen) if steady or unseen else np.asarray([float("nan")])
    return {
        "rate": writer.rate,
        "pairs_per_s": writer.pairs_per_s,
        "offered": writer.written / duration,
        "written": writer.written,
        "duration": duration,
        "ingested_rate": (read_at_end - read_at_start) / (drained_at - writer.started_at),
        "window": drained_at - writer.started_at,
        "backlog_at_stop": writer.written - ((read_at_stop or 0) - read_at_start),
        "backlog": writer.written - (read_at_end - read_at_start),
        "expected": expected,
        "seen": len(seen),
        "unseen": len(pending),
        "steady": len(steady) + len(unseen),
        "p50": float(np.percentile(samples, 50)),
        "p99": float(np.percentile(samples, 99)),
        "max": float(np.max(samples)),
        "per_batch": progress.summary(),
    }


def _sizes(quick: bool) -> dict[str, Any]:
    """Customers × days of the training data and of the catch-up log; seconds of the live runs."""
    if quick:  # a smoke run: one batch per part, no diagnostics, only the 10,000 events/s live run
        return {"train": (500, 8), "log": (1_000, 2), "files": None, "live": {"target": (10.0, 20.0)}, "warmup": 3.0}
    return {
        "train": (500, 8),
        "log": (2_000, 4),
        "files": FILES_PER_TRIGGER,
        "live": {"floor": (45.0, 150.0), "target": (45.0, 45.0)},  # seconds of writing, of drain
        "warmup": 10.0,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Catch-up throughput of the whole pipeline, then event -> Redis prediction freshness.

    The full run measures freshness twice: at half the measured catch-up rate (a rate the pipeline
    can sustain here: its latency floor), then at 10,000 events/s (the target's rate).
    """
    throwaway_keys()
    from common.compile import compile_usecase
    from common.generate import GenerateOptions, generate_landing
    from common.runtime.redis_server import configured_or_throwaway
    from common.settings import Paths
    from common.spec import load_usecase

    size = _sizes(quick)
    (train_customers, train_days), (log_customers, log_days) = size["train"], size["log"]
    # The log ends two days ago: no firing of it is within the trigger's 1-day cool-down of the live events.
    log_end = datetime.now(UTC).date() - timedelta(days=2)
    log_start = log_end - timedelta(days=log_days)
    home = Path(tempfile.mkdtemp(prefix="loom-bench-proactive-"))
    work = Paths(home)
    spec = load_usecase("churn")
    plan = compile_usecase(spec)
    rows: list[dict[str, Any]] = [machine_load_row(", shared with other agents' Spark jobs: figures are noisy")]
    try:
        with local_spark("proactive") as spark, configured_or_throwaway() as url, captured(LOGGERS) as capture:
            outcome, setup = prepare_champion(spark, plan, work, train_customers, train_days, log_start)
            options = GenerateOptions(customers=log_customers, days=log_days, start=log_start, rows_per_file=50_000)
            generate_landing(spec, work, options, overwrite=True)
            events = work.landing / spec.name / "events"
            floor_s, floor_batches = floor_query(spark, events, home / "floor-checkpoint", size["files"])
            caught = catch_up(spark, plan, work, url, capture, size["files"])
            rows += catch_up_rows(caught, outcome, setup, log_customers, log_days, size["files"])
            rows += floor_rows(caught["events"], floor_s, floor_batches, caught)
            if not quick:  # diagnostics of the trigger query's cost, apart from each other
                rows += _diagnostic_rows(spark, plan, work, home, caught["trigger_batches"])
            capture.take()
            customers = [f"C{i:08d}" for i in range(1, log_customers + 1)]
            pairs = list(customers)
            random.Random(5).shuffle(pairs)
            half = len(pairs) // 2
            rates = {"floor": float(min(RATE, max(20, round(end_to_end(caught) / 2)))), "target": float(RATE)}
            for tag, (seconds, drain) in size["live"].items():
                chosen = pairs[:half] if tag == "floor" else pairs[half:]  # a customer fires once: 1-day cool-down
                fresh = _freshness(
                    spark, plan, work, url, (tag, customers, chosen, rates[tag], seconds), size["warmup"], drain
                )
                rows += _freshness_rows(tag, fresh, capture.take(), size["warmup"], drain)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    for row in rows:
        row.setdefault("target", None)
    return rows


def _diagnostic_rows(
    spark: Any, plan: Any, work: Any, home: Path, firing_batches: list[tuple[int, int, float]]
) -> list[dict[str, Any]]:
    operator_rows, operator_s = _operator_alone(spark, plan, work, home)
    rows = operator_cost_rows(spark, plan, work, home, FILES_PER_TRIGGER) + [
        {
            "metric": "diagnostic: trigger operator alone (bronze -> firings, noop sink)",
            "value": round(operator_rows / operator_s, 1),
            "unit": "events/s",
            "note": f"{operator_rows:,} bronze rows (training + catch-up log) in {operator_s:.1f}s, no scoring",
        }
    ]
    biggest = max(firing_batches, key=lambda b: b[1], default=None)
    if biggest is None:
        return rows
    steps = _scoring_steps(spark, plan, work, biggest[0])
    return rows + [
        {
            "metric": "diagnostic: features as of firing (features_at) for the biggest catch-up trigger batch",
            "value": round(steps["features_s"], 2),
            "unit": "s",
            "note": (
                f"{steps['firings']} firings (the whole batch took {biggest[2]:.1f}s in foreachBatch); "
                "recomputed from bronze: a scan of the source for the firing entities, every batch"
            ),
        },
        {
            "metric": "diagnostic: spark_udf scoring of that batch",
            "value": round(steps["score_s"], 2),
            "unit": "s",
            "note": f"{steps['firings']} firings, features already computed and cached",
        },
    ]


def _freshness_rows(
    tag: str, fresh: dict[str, Any], live: list[logging.LogRecord], warmup_s: float, drain_s: float
) -> list[dict[str, Any]]:
    live_batches = trigger_batches(live)
    ingest_batches, ingest_steps = batch_steps(live, "common.ingest.writer")
    feature_batches, feature_steps = batch_steps(live, "loom.stream")
    trigger_s = sorted(s for _, _, s in live_batches)
    rate = f"{fresh['rate']:,.0f} events/s"
    kept_up = fresh["backlog"] <= 0.01 * fresh["written"] and not fresh["unseen"]
    why = "10,000 events/s, the target's rate" if tag == "target" else "half the catch-up end-to-end rate"
    verdict = (
        f"the pipeline kept up (every event ingested, every firing in Redis within {drain_s:.0f}s of the end)"
        if kept_up
        else f"the pipeline did NOT keep up: {fresh['backlog_at_stop']:,} events not yet in bronze when the writer "
        f"stopped, {fresh['backlog']:,} still {drain_s:.0f}s later, so freshness grows with the run's length"
    )
    note = (
        f"rate = {why}; {verdict}; {fresh['seen']}/{fresh['expected']} firings seen in Redis, "
        f"{fresh['unseen']} not within {drain_s:.0f}s after the writer stopped (counted at their wait so far: "
        f"a lower bound); {fresh['steady']} firings after a {warmup_s:.0f}s warm-up in the percentiles; "
        f"max {fresh['max']:.1f}s; every query on a {INTERVAL} trigger; {len(trigger_s)} trigger batches with firings, "
        f"median {np.median(trigger_s) if trigger_s else float('nan'):.1f}s"
    )
    return [
        {
            "metric": f"live @ {rate}: offered (landing files, Python writer)",
            "value": round(fresh["offered"], 1),
            "unit": "events/s",
            "note": f"{fresh['written']:,} events in {fresh['duration']:.1f}s, {fresh['pairs_per_s']:g} trigger pairs/s",
        },
        {
            "metric": f"live @ {rate}: ingested into bronze / seconds of writing + drain",
            "value": round(fresh["ingested_rate"], 1),
            "unit": "events/s",
            "note": (
                f"{fresh['written'] - fresh['backlog']:,} of {fresh['written']:,} events in {fresh['window']:.0f}s "
                f"(the drain waits for the firings: below the offered rate even when all was ingested); "
                f"ingest {ingest_batches} batches: {shown(ingest_steps)}; "
                f"features {feature_batches} batches: {shown(feature_steps)}; "
                f"query phases per batch with input: {fresh.get('per_batch', 'not measured')}"
            ),
        },
        {
            "metric": f"live @ {rate}: freshness p50 (firing event time -> prediction in Redis)",
            "value": round(fresh["p50"], 3),
            "unit": "s",
            "note": note,
        },
        {
            "metric": f"live @ {rate}: freshness p99 (firing event time -> prediction in Redis)",
            "value": round(fresh["p99"], 3),
            "unit": "s",
            "target": "<= 2" if tag == "target" else None,
            "note": note,
        },
    ]
