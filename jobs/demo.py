"""``loom demo``: the whole lifecycle built so far, on embedded defaults.

Each step is a real job over real stores; the demo only strings them together
in one process, so one Spark session and one Redis serve them all.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import time
from pathlib import Path

from common.compile import compile_usecase
from common.features.backfill import backfill
from common.features.compaction import compact
from common.features.compaction import render as render_compaction
from common.features.consistency import check_group
from common.features.online_sink import open_store
from common.generate import generate_landing
from common.generate.options import DEMO_CUSTOMERS, DEMO_DAYS, demo_options
from common.ingest.report import render_reports
from common.lake.paths import bronze_path
from common.pipeline import catch_up
from common.runtime.redis_server import connect, describe, redis_url
from common.runtime.smoke import run_smoke
from common.runtime.spark import build_session
from common.runtime.tracking import tracking_uri
from common.settings import Paths, paths
from common.spec import load_usecase
from jobs.runner import add_metadata_dir_argument, add_spark_arguments, main_for

DESCRIPTION = (
    "Run the end-to-end demo: data -> Delta -> features -> Redis -> train -> register -> score, "
    "checked for consistency between batch and online."
)

DEMO_KEYS = ("LOOM_KEY_PII_HMAC", "LOOM_KEY_PII_ENCRYPTION")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spark_arguments(parser)
    parser.add_argument("--usecase", default="churn", help="use case to demo (default churn)")
    add_metadata_dir_argument(parser)
    parser.add_argument(
        "--customers", type=int, default=DEMO_CUSTOMERS, help=f"customers to generate (default {DEMO_CUSTOMERS})"
    )
    parser.add_argument(
        "--days", type=int, default=DEMO_DAYS, help=f"days of events, ending today (default {DEMO_DAYS})"
    )


def ensure_demo_keys(work: Paths) -> None:
    """Random PII keys in files under $LOOM_HOME/keys, unless the environment names keys.

    The demo runs on a fresh machine with nothing configured; real deployments
    set LOOM_KEY_<NAME> or LOOM_KEY_<NAME>_FILE themselves.
    """
    folder = work.home / "keys"
    for variable in DEMO_KEYS:
        if os.environ.get(variable) or os.environ.get(f"{variable}_FILE"):
            continue
        path = folder / variable.lower()
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
            path.chmod(0o600)
        os.environ[f"{variable}_FILE"] = str(path)


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.monotonic()


def done(started: float) -> None:
    print(f"   ({time.monotonic() - started:.1f}s)", flush=True)


def run(args: argparse.Namespace) -> int:
    work = paths()
    ensure_demo_keys(work)
    started = step("1. stores: Delta (time travel, MERGE), Redis, MLflow")
    spark = build_session(args.profile, app_name="loom-demo")
    url = redis_url(work.home)
    report = run_smoke(spark, connect(url), url, work)
    print(f"   ok: {report.delta_versions} Delta versions, model {report.model_uri}")
    done(started)

    spec = load_usecase(args.usecase)
    plan = compile_usecase(spec)
    started = step(f"2. metadata: {spec.name} compiled into {len(plan.groups)} feature groups")
    for name, group in plan.groups.items():
        print(f"   {name}: {len(group.feature_names)} features from {group.source} ({group.source_kind})")
    done(started)

    started = step(f"3. generate landing files: {args.customers} customers x {args.days} days, ending today")
    options = demo_options(customers=args.customers, days=args.days)
    summary = generate_landing(spec, work, options, overwrite=True)
    print(f"   {summary.rows} rows in {summary.out}")
    done(started)

    kafka_ok, topics = _kafka(spark, spec, work)
    failed = not kafka_ok

    started = step("4. stream: landing -> bronze + quarantine -> features -> Redis + Delta (availableNow)")
    reports = catch_up(spark, plan, work, url, max_files_per_trigger=48, parts=("ingest", "features"))
    print("   " + render_reports(reports).replace("\n", "\n   "))
    events = sum(r.read for r in reports if spec.sources[r.source].kind == "events")
    seconds = time.monotonic() - started
    print(f"   {events:,} events (landing -> Redis + Delta) in {seconds:.1f}s: {events / seconds:,.0f} events/s")
    done(started)

    kafka_ok, kafka_lake = _kafka_ingest(spark, spec, work, topics)
    failed |= not kafka_ok

    started = step("4b. compact: offline history, latest written row per key + OPTIMIZE (`loom compact`, nightly)")
    print("   " + render_compaction(compact(spark, work, plan)).replace("\n", "\n   "))
    done(started)

    started = step("5. backfill: bronze -> offline feature history (Delta)")
    for r in backfill(spark, work, plan):
        state = "nothing new" if r.skipped else f"{r.rows} rows, {r.entities} entities"
        print(f"   {r.group}: {state} -> {r.table}")
    done(started)

    started = step("5b. materialize: offline history as of now -> Redis (`loom materialize`, event-time guard)")
    failed |= not _materialize(spark, plan, work, url)
    done(started)

    started = step("6. consistency: batch recompute vs Redis, every entity and feature")
    groups = [g for g in plan.groups.values() if g.online]
    store = open_store(groups, url)
    try:
        for group in groups:
            check = check_group(spark, work, group, store)
            worst = max((s.max_abs_diff for s in check.features.values()), default=0.0)
            print(
                f"   {group.name}: {check.entities_checked} entities, {check.entities_mismatched} mismatched, "
                f"{check.missing_online} missing, max |diff| {worst:.2g}"
            )
            failed |= not check.ok
        first = sorted(
            r[0]
            for r in spark.read.format("delta")
            .load(bronze_path(work, spec.name, "customers"))
            .select(plan.group("activity").entity_key)
            .limit(1)
            .collect()
        )[0]
        vectors = store.read([first], [g.name for g in groups])
        print(f"\n   online lookup for {first} (one round trip):")
        for (_, group_name), vector in vectors.items():
            shown = {k: v for k, v in list(vector.as_dict().items())[:5]}
            print(f"   {group_name} @ {vector.event_time:%Y-%m-%d %H:%M:%S}: {shown} ...")
    finally:
        store.close()
    done(started)

    if not failed:
        for name in plan.models:
            failed |= not _model_lifecycle(spark, plan, name, work, url, kafka_lake=kafka_lake)
            _monitoring(spark, plan, name, work)
        _schedules(spec, work)
        failed |= not _notebook(spec.name, work)
        failed |= not _snapshot(spark, work, url)
        failed |= not _scale_out(plan, work, url)
    if kafka_lake is not None:
        import shutil

        shutil.rmtree(kafka_lake.home, ignore_errors=True)

    print("\n== where everything lives")
    print(f"delta tables:  {work.lake}")
    print(f"redis server:  {describe(url)}")
    print(f"mlflow store:  {tracking_uri(work)} (artifacts {work.mlflow_artifacts})")
    if failed:
        print("\ndemo: consistency check FAILED")
        return 1
    print("\ndemo: OK")
    return 0


def _kafka(spark, spec, work: Paths) -> tuple[bool, dict[str, str]]:
    """Publish the generated events to Kafka (`loom generate --to kafka`), each source to a topic of this run,
    and read them back with Spark's Kafka source: the same records arrive. Returns the check and the topics."""
    from common.generate.to_kafka import kafka_sources, landing_records, publish, topic_name
    from common.lake.paths import landing_folder
    from common.runtime.kafka_server import BOOTSTRAP_ENV, kafka_bootstrap

    started = step("3b. kafka: the events -> a local KRaft broker (`loom generate --to kafka`) -> Spark's Kafka source")
    bootstrap = kafka_bootstrap(work.home)
    os.environ.setdefault(BOOTSTRAP_ENV, bootstrap)  # for step 4a's `format: kafka` source
    out = work.landing / spec.name
    # a topic of this run: the broker's folder outlives the demo, and 4a reads its topic from the start
    run = time.strftime("%Y%m%d%H%M%S")
    topics = {name: f"{topic_name(spec.name, name)}.demo-{run}" for name in kafka_sources(spec)}
    summary = publish(spec, out, bootstrap, topics=topics)
    print("   " + summary.render().replace("\n", "\n   "))
    ok = True
    for name, topic in topics.items():
        values = (
            spark.read.format("kafka")
            .option("kafka.bootstrap.servers", bootstrap)
            .option("subscribe", topic)
            .load()
            .selectExpr("CAST(value AS STRING) AS value")
        )
        read = sorted(row.value for row in values.collect())
        same = read == sorted(landing_records(Path(landing_folder(spec.sources[name], out))))
        print(
            f"   Spark read {len(read):,} records back from {topic}: {'the landing records, each once' if same else 'NOT the landing records'}"
        )
        ok &= same
    done(started)
    return ok, topics


def _kafka_ingest(spark, spec, work: Paths, topics: dict[str, str]) -> tuple[bool, Paths]:
    """Ingest 3b's topics with ``format: kafka`` variants of the sources (into a lake of their own) and compare
    their bronze with the file-fed bronze of step 4, origin columns aside; then delete the run's topics.
    Returns the check and the Kafka-fed lake (step 8b computes its features and scores)."""
    import shutil

    from confluent_kafka.admin import AdminClient

    from common.ingest.stream import ingest_source
    from common.ingest.validation import SOURCE_FILE
    from common.ingest.writer import INGESTED_AT
    from common.runtime.kafka_server import BOOTSTRAP_ENV, client_settings
    from common.spec.usecase import UseCase

    started = step("4a. kafka: the same events through `format: kafka` sources -> bronze, compared with the files'")
    document = spec.model_dump(mode="json", exclude_none=True)
    for name, topic in topics.items():
        document["sources"][name].update(format="kafka", kafka={"topic": topic})
        document["sources"][name].pop("path")
    kafka_spec = UseCase.model_validate(document)
    scratch = Paths(work.home / "kafka-demo")
    shutil.rmtree(scratch.home, ignore_errors=True)
    ok = True
    for name, topic in topics.items():
        report = ingest_source(spark, kafka_spec, name, scratch)
        files, kafka = (
            spark.read.format("delta").load(bronze_path(w, spec.name, name)).drop(SOURCE_FILE, INGESTED_AT)
            for w in (work, scratch)
        )
        differ = files.exceptAll(kafka).count() + kafka.exceptAll(files).count()
        print(
            f"   {topic}: read {report.read:,}, accepted {report.accepted:,}, quarantined {report.quarantined:,}; "
            f"bronze {'the same rows as from files' if differ == 0 else f'DIFFERS from files ({differ} rows)'}"
        )
        ok &= differ == 0
    # the broker's folder outlives the demo: leave no topic of this run behind (the client is kept until
    # the deletes are answered: a dropped client cancels its requests)
    admin = AdminClient(client_settings(os.environ[BOOTSTRAP_ENV]))
    for future in admin.delete_topics(list(topics.values())).values():
        future.result(30)
    done(started)
    return ok, scratch


def _kafka_scores(spark, plan, name: str, work: Paths, kafka_lake: Paths, url: str, now, batch: dict) -> bool:
    """Step 8b: the Kafka-fed lake of 4a gets its own feature history (backfill of the groups its Kafka sources
    feed; the other sources and groups are the file run's, copied), its features are checked against Redis (the
    file run's vectors) and its customers are scored by the same champion as of step 8's time: the same scores."""
    import shutil

    from common.features.backfill import backfill
    from common.lake.paths import history_path
    from common.models.scoring import score_batch

    kafka_fed = {path.name for path in (kafka_lake.lake / plan.usecase / "bronze").iterdir()}  # 4a's sources
    groups = [g for g in plan.groups.values() if g.source in kafka_fed]
    started = step(
        f"8b. kafka: the Kafka-fed lake of 4a -> {', '.join(g.name for g in groups)} history -> "
        "consistency vs Redis, and scores vs step 8's"
    )
    copies = [(bronze_path(work, plan.usecase, s), bronze_path(kafka_lake, plan.usecase, s)) for s in plan.spec.sources]
    copies += [
        (history_path(work, g), history_path(kafka_lake, g)) for g in plan.groups.values() if g.source not in kafka_fed
    ]
    for source_table, copy in copies:
        if not Path(copy).exists():  # the sources and groups not fed by Kafka: the file run's tables
            shutil.copytree(source_table, copy)
    backfill(spark, kafka_lake, plan, groups=[g.name for g in groups])
    ok = True
    store = open_store([g for g in groups if g.online], url)
    try:
        for group in (g for g in groups if g.online):
            check = check_group(spark, kafka_lake, group, store)
            print(
                f"   {group.name} from Kafka vs Redis: {check.entities_checked} entities, "
                f"{check.entities_mismatched} mismatched, {check.missing_online} missing"
            )
            ok &= check.ok
    finally:
        store.close()
    if not kafka_lake.mlflow_db.exists():  # one registry: the champion of step 7
        kafka_lake.mlflow_db.symlink_to(work.mlflow_db)
    ref, written, _ = score_batch(spark, plan, f"{name}@champion", now, kafka_lake)
    scores = {row[0]: row["score"] for row in written.collect()}
    same_keys = scores.keys() == batch.keys()
    worst = max((abs(scores[k] - batch[k]) for k in batch if k in scores), default=float("inf"))
    print(
        f"   {len(scores)} entities scored from Kafka with {ref} "
        f"({'the same entities' if same_keys else 'NOT the same entities'} as step 8): max |diff| {worst:.2g}"
    )
    done(started)
    return ok and same_keys and worst <= 1e-9


def _materialize(spark, plan, work: Paths, url: str) -> bool:
    """Publish every online group as of now; True when each entity of the offline history was written, or
    skipped because the stream had already stored a newer vector."""
    from datetime import UTC, datetime

    from pyspark.sql import functions as F

    from common.compile.plan import FEATURE_TS
    from common.features.publish import materialize

    now = datetime.now(UTC)
    ok = True
    for report in materialize(spark, work, plan, now, url):
        history = spark.read.format("delta").load(report.table).where(F.col(FEATURE_TS) <= F.lit(now))
        expected = history.select(plan.group(report.group).entity_key).distinct().count()
        good = report.entities == expected == report.written + report.skipped and expected > 0
        print(
            f"   {report.group}: {report.entities} entities as of {now:%Y-%m-%d %H:%M}, {report.written} written, "
            f"{report.skipped} skipped as older than the stored vector ({'OK' if good else f'expected {expected}'})"
        )
        ok &= good
    return ok


def _model_lifecycle(spark, plan, name: str, work: Paths, url: str, kafka_lake: Paths | None = None) -> bool:
    """Train -> register -> promote -> batch score (and the Kafka-fed lake's, step 8b) -> online score; True when
    batch and online agree (and Kafka and files)."""
    from datetime import UTC, datetime

    import mlflow
    import numpy as np
    import pandas as pd
    from pyspark.sql import functions as F

    from common.lake.delta import table_exists
    from common.lake.paths import predictions_path
    from common.models import registry
    from common.models.scoring import score_batch
    from common.models.train import train_model
    from common.serving.local_client import rest_scores

    started = step(f"7. train {name}: point-in-time training set -> MLflow run -> registry")
    outcome = train_model(spark, plan, name, work)
    print("   " + outcome.render().replace("\n", "\n   "))
    client = registry.client(work)
    history = registry.champion_history(name, client)
    print(
        f"   registry: @champion v{registry.version_by_alias(name, registry.CHAMPION, client)}, champions so far {history}"
    )
    if len(history) >= 2:
        print(f"   `loom rollback --usecase {plan.usecase} --model {name}` would restore v{history[-2]}")
    else:
        print("   rollback: nothing to roll back to yet (one champion so far)")
    done(started)

    now = datetime.now(UTC)
    started = step(f"8. batch score: features as of now -> {name}@champion via spark_udf -> predictions (Delta)")
    ref, written, path = score_batch(spark, plan, f"{name}@champion", now, work)
    batch = {r[0]: r["score"] for r in written.collect()}
    top = sorted(batch.items(), key=lambda item: -item[1])[:3]
    print(f"   {len(batch)} entities scored with {ref} -> {path}")
    print("   highest: " + ", ".join(f"{key} {score:.3f}" for key, score in top))
    done(started)
    kafka_same = kafka_lake is None or _kafka_scores(spark, plan, name, work, kafka_lake, url, now, batch)

    triggered = [t for t in plan.triggers.values() if t.model == name]
    if triggered:
        started = step(f"9. stream-score: bronze events -> triggers {[t.name for t in triggered]} -> {name}@champion")
        from common.triggers.stream import start_trigger_streams

        for query in start_trigger_streams(spark, work, plan, url, available_now=True):
            query.awaitTermination()
            if query.exception() is not None:
                raise query.exception()
        table = spark.read.format("delta").load(predictions_path(work, plan.usecase, "stream"))
        summary = table.groupBy("trigger", "model_version").agg(
            F.count("*").alias("firings"), F.sum(F.col("action").cast("int")).alias("actions")
        )
        for row in summary.collect():
            print(
                f"   {row['trigger']}: {row['firings']} firings scored by v{row['model_version']}, "
                f"{row['actions']} actions"
            )
        print(f"   -> {predictions_path(work, plan.usecase, 'stream')} (+ actions, + latest per customer in Redis)")
        done(started)

    started = step(f"10. online score: entity keys -> Redis (one round trip) -> {name}@champion pyfunc")
    model = mlflow.pyfunc.load_model(ref.uri, model_config={"redis_url": url})
    keys = sorted(batch)[:200]
    key_column = model.unwrap_python_model().feature_spec.entity_key
    online = np.asarray(model.predict(pd.DataFrame({key_column: keys})))
    worst = float(np.max(np.abs(online - np.array([batch[k] for k in keys]))))
    print(f"   {len(keys)} entities: online vs batch score, max |diff| {worst:.2g}")
    done(started)

    started = step(f"11. REST: POST /v1/models/{name}/predict (uvicorn, API key) -> Redis -> {name}@champion")
    answer = rest_scores(plan.usecase, name, work, url, key_column, keys[:3])
    request_id = answer.request_id
    for key, score in answer.scores.items():
        print(f"   {key}: {score:.4f} by v{answer.version} (batch {batch[key]:.4f})")
    rest_worst = max(abs(score - batch[key]) for key, score in answer.scores.items())
    print(f"   REST vs batch score, max |diff| {rest_worst:.2g}")
    # the server has stopped: its shutdown wrote every logged prediction to Delta
    rest_table = predictions_path(work, plan.usecase, "rest")
    if table_exists(spark, rest_table):
        logged = spark.read.format("delta").load(rest_table)
        ours = logged.where(F.col("request_id") == request_id).count()
        print(f"   prediction log: {ours} rows of this request ({logged.count()} in all) -> {rest_table}")
    else:
        print(f"   prediction log: no table at {rest_table} (see the log above)")
    done(started)
    return worst <= 1e-9 and rest_worst <= 1e-9 and kafka_same


if __name__ == "__main__":
    raise SystemExit(main_for("demo", __import__(__name__)))


def _monitoring(spark, plan, name: str, work: Paths) -> None:
    """Evaluate the logged predictions against the outcomes, drift, and the retraining policy."""
    from common.monitoring.drift import compute_drift
    from common.monitoring.evaluate import evaluate_model
    from common.monitoring.retrain import retrain

    started = step(f"12. evaluate {name}: predictions (batch, stream, REST) vs outcomes as they arrived; drift")
    print("   " + evaluate_model(spark, plan, name, work).render().replace("\n", "\n   "))
    drift = compute_drift(spark, plan, name, work)
    print("   " + "\n   ".join(drift.render().splitlines()[:6]) + "\n   ...")
    done(started)

    started = step(f"13. retrain {name}: the policy in metadata (drift, metric floor, schedule) -> challenger?")
    print("   " + retrain(spark, plan, name, work).render().replace("\n", "\n   "))
    done(started)


def _schedules(spec, work: Paths) -> None:
    """Export the metadata's schedules as a crontab and as Databricks Asset Bundle jobs."""
    from common.schedules import export_bundle, export_crontab
    from jobs.schedule import plan as plan_schedules

    started = step("14. schedules: metadata crons -> crontab and Databricks Asset Bundle jobs (same entry points)")
    planned = plan_schedules(spec)
    folder = work.home / "schedules"
    folder.mkdir(parents=True, exist_ok=True)
    crontab, bundle = folder / f"{spec.name}.crontab", folder / f"{spec.name}.databricks.yml"
    crontab.write_text(export_crontab(spec, planned, spec.name, work.home))
    bundle.write_text(export_bundle(spec, planned, spec.name, folder))
    for item in planned:
        print(f"   {item.entry.schedule.cron:<14} loom {item.job} {' '.join(item.argv)}  ({item.name})")
    print(f"   -> {crontab}\n   -> {bundle}")
    done(started)


def _notebook(usecase: str, work: Paths) -> bool:
    """Run the features notebook locally, as `loom notebook run` does (in this process, on this session)."""
    import contextlib

    from common.notebooks import run_notebook
    from common.settings import PROJECT_ROOT

    path = PROJECT_ROOT / "notebooks" / "01_features.py"
    started = step(f"15. notebooks: {path.relative_to(PROJECT_ROOT)} run locally, cell by cell (`loom notebook run`)")
    out = work.home / "notebooks" / path.stem
    out.mkdir(parents=True, exist_ok=True)
    log = out / "output.txt"
    with log.open("w") as sink, contextlib.redirect_stdout(sink):
        run = run_notebook(path, {"usecase": usecase}, out=out)
    consistent = bool(run.namespace.get("consistent"))
    print(
        f"   {len(run.ran)} cells ran, {len(run.skipped)} markdown cells; consistency {'OK' if consistent else 'FAILED'}"
    )
    print(f"   -> plots {sorted(p.name for p in out.glob('*.png'))} and output in {out}")
    print("   all six: loom notebook run notebooks/0N_<stage>.py; on Databricks: the bundle's notebooks job")
    done(started)
    return consistent


SNAPSHOT_CUSTOMERS = 2000


def _snapshot(spark, work: Paths, url: str) -> bool:
    """The second example, a snapshot (metadata/telco): one table, blanks, the label in it; an entity split,
    an imputer + scaler + logistic regression Pipeline; materialize, then online = batch."""
    from datetime import UTC, datetime, timedelta

    import mlflow
    import pandas as pd

    from common.features.publish import materialize
    from common.generate.options import GenerateOptions
    from common.ingest.stream import ingest_source
    from common.models.scoring import score_batch
    from common.models.train import train_model

    spec = load_usecase("telco")
    plan = compile_usecase(spec)
    started = step(f"16. snapshot use case {spec.name}: one table, blanks, the label in it -> train -> serve")
    as_of = datetime.now(UTC).date() - timedelta(days=1)
    summary = generate_landing(spec, work, GenerateOptions(customers=SNAPSHOT_CUSTOMERS, start=as_of), overwrite=True)
    reports = [ingest_source(spark, spec, name, work) for name in spec.sources]
    print("   " + render_reports(reports).replace("\n", "\n   "))
    backfill(spark, work, plan)
    outcome = train_model(spark, plan, "telco_churn", work)
    print(
        f"   telco_churn v{outcome.version}: holdout (entity split) roc_auc {outcome.metrics['roc_auc']:.4f} "
        f"(the true probabilities reach {summary.facts['true_roc_auc']:.4f}); {outcome.decision}"
    )
    now = datetime.now(UTC)
    _, written, _ = score_batch(spark, plan, "telco_churn@champion", now, work)
    batch = {row["customer_id"]: row["score"] for row in written.limit(20).collect()}
    (published,) = materialize(spark, work, plan, now, url)
    model = mlflow.pyfunc.load_model("models:/telco_churn@champion", model_config={"redis_url": url})
    keys = sorted(batch)
    online = model.predict(pd.DataFrame({"customer_id": keys}))
    gap = max(abs(float(a) - batch[k]) for k, a in zip(keys, online, strict=True))
    print(
        f"   materialized {published.written} vectors; online (keys -> Redis -> Pipeline) vs batch: max |diff| {gap:.2g}"
    )
    done(started)
    return gap <= 1e-9


def _scale_out(plan, work: Paths, url: str) -> bool:
    """The same job on the distributed engines `loom cluster up` starts (here owned by the demo: they die
    with it): `loom materialize --profile standalone` runs on a Spark standalone master with two 1-core
    workers and writes into a Redis Cluster of three masters. True when every key landed, spread over the
    masters, with the value the single Redis holds."""
    import shutil
    import subprocess
    import sys

    from common.online.redis_store import key_prefix
    from common.runtime.local_cluster import write_spark_defaults
    from common.runtime.redis_cluster import CLUSTER_ENV, RedisClusterServers
    from common.runtime.redis_server import masters
    from common.runtime.spark_standalone import SparkStandalone, alive_workers

    started = step(
        "17. scale-out: `loom materialize --profile standalone` on 2 Spark workers -> 3-master Redis Cluster"
    )
    folder = work.home / "demo-cluster"
    shutil.rmtree(folder, ignore_errors=True)
    with (
        SparkStandalone(directory=folder / "spark", workers=2) as spark_cluster,
        RedisClusterServers(directory=folder / "redis") as redis_cluster,
    ):
        print(f"   spark {spark_cluster.master_url}: {alive_workers(spark_cluster.ui_url)} workers")
        env = {
            **os.environ,
            "SPARK_MASTER_URL": spark_cluster.master_url,
            # the cluster's own defaults (shuffle partitions for its 2 cores), as `loom cluster up` writes them
            "SPARK_CONF_DIR": str(write_spark_defaults(folder / "spark-conf", slots=2)),
            "PYSPARK_PYTHON": sys.executable,
            "REDIS_URL": redis_cluster.url,
            CLUSTER_ENV: "1",
        }
        command = [sys.executable, "-m", "jobs.materialize", "--usecase", plan.usecase, "--profile", "standalone"]
        job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        print("   " + "\n   ".join(job.stdout.strip().splitlines()[-len(plan.groups) - 1 :]))
        if job.returncode != 0:
            print(f"   loom materialize on the cluster FAILED (exit {job.returncode}):\n{job.stderr[-2000:]}")
            return False
        cluster = connect(redis_cluster.url, cluster=True)
        pattern = f"{key_prefix(plan.usecase, plan.version)}*"
        on_master = [list(node.scan_iter(match=pattern, count=1000)) for node in masters(cluster)]
        per_master = [len(found) for found in on_master]
        keys = [key for found in on_master for key in found]
        single = connect(url, cluster=False)
        differ = sum(a != b for a, b in zip(cluster.mget_nonatomic(keys), single.mget(keys), strict=True))
        cluster.close()
        single.close()
    print(
        f"   {len(keys):,} vectors on the cluster, per master {per_master}; "
        f"{differ} differ from the single Redis's ({'OK' if not differ else 'MISMATCH'})"
    )
    print("   `loom cluster up|status|down` starts these engines (and an MLflow server) for your own jobs")
    done(started)
    return bool(keys) and min(per_master) > 0 and differ == 0
