"""Point-in-time training sets: ``create_training_set`` beside its read floor and Feast, on local[2].

Builds, in a temporary LOOM_HOME, synthetic feature history Delta tables for the
churn use case's groups (laid out as ``loom backfill`` writes them: entity key,
``feature_ts``, one double per feature, ``_schema_version``, ``_date`` partition)
and a Delta table of label rows whose times fall inside the history range. Then,
in one run on the same kind of data:

* Loom: ``create_training_set(labels, ["activity.*", "profile.*"])`` end to end
  (Delta versions, the label min/max query, the join), materialized with the
  ``noop`` sink, after one warm-up call; writing the inputs is not timed;
* the read floor: the needed history columns read once, with a count;
* Feast 0.67 ``get_historical_features`` (file offline store, the inputs
  exported to Parquet) in the bench-only virtualenv ``make feast-venv`` makes,
  at sizes growing tenfold until one takes more than 10 minutes; Loom is timed
  at the largest size Feast completed;
* the backfill rate: generated churn events -> bronze -> ``backfill``.

Full size: 1M labels over 10M ``activity`` rows (100k customers × 100 rows over
30 days) plus 100k ``profile`` rows. Targets from DESIGN.md §4.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import local_spark, machine_load_row, throwaway_keys
from common.settings import Paths

NAME = "training_set"
START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z: first activity row
SPAN_S = 30 * 86_400  # activity history covers 30 days
TARGET = ">= 100000"
FEAST_LIMIT_S = 600  # the largest size Feast completes within 10 minutes is the shared size


def _sizes(quick: bool) -> tuple[int, int, int]:
    """(customers, activity rows per customer, labels)."""
    return (2_000, 100, 20_000) if quick else (100_000, 100, 1_000_000)


def _feast_ladder(quick: bool) -> list[tuple[int, int, int]]:
    """Sizes tried with Feast, smallest first, until one fails or takes more than FEAST_LIMIT_S."""
    return [(200, 100, 2_000)] if quick else [(1_000, 100, 10_000), (10_000, 100, 100_000), (100_000, 100, 1_000_000)]


def _feature_values(names: tuple[str, ...], seed: int) -> list[Any]:
    from pyspark.sql import functions as F

    # Counts and sums have few distinct values: 10 to 10,000 levels, as in real feature tables
    # (random full-precision doubles would make the scan, not the join, the measurement).
    return [
        F.floor(F.rand(seed=seed + i) * (10 ** (1 + i % 4))).cast("double").alias(name) for i, name in enumerate(names)
    ]


def _customer(id_column: Any) -> Any:
    from pyspark.sql import functions as F

    return F.concat(F.lit("C"), F.lpad(id_column.cast("string"), 7, "0"))


def _write_inputs(spark: Any, plan: Any, work: Any, sizes: tuple[int, int, int]) -> dict[str, Any]:
    """Write the activity and profile histories and the label table; return their sizes and paths."""
    from pyspark.sql import functions as F

    from common.features.offline import PARTITION, SCHEMA_VERSION
    from common.lake.paths import history_path

    customers, per_customer, labels = sizes
    activity, profile = plan.group("activity"), plan.group("profile")
    step_s = SPAN_S // per_customer
    # Row id -> (customer, step): each customer gets one row per step, at a per-customer offset
    # inside the step so that rows of different customers do not share times.
    rows = (
        spark.range(customers * per_customer)
        .select(
            _customer(F.col("id") % customers).alias(activity.entity_key),
            F.timestamp_micros(
                F.lit(START_US)
                + (F.floor(F.col("id") / customers) * step_s + (F.col("id") * 7919) % step_s) * F.lit(1_000_000)
            ).alias("feature_ts"),
            *_feature_values(activity.feature_names, seed=1),
        )
        .withColumns({SCHEMA_VERSION: F.lit(activity.schema_version).cast("long"), PARTITION: F.to_date("feature_ts")})
    )
    rows.write.format("delta").partitionBy(PARTITION).mode("overwrite").save(history_path(work, activity))
    # One profile row per customer, a day before the activity starts (the profile group has no ttl).
    (
        spark.range(customers)
        .select(
            _customer(F.col("id")).alias(profile.entity_key),
            F.timestamp_micros(F.lit(START_US - 86_400_000_000) + F.col("id")).alias("feature_ts"),
            *_feature_values(profile.feature_names, seed=101),
        )
        .withColumns({SCHEMA_VERSION: F.lit(profile.schema_version).cast("long"), PARTITION: F.to_date("feature_ts")})
        .write.format("delta")
        .partitionBy(PARTITION)
        .mode("overwrite")
        .save(history_path(work, profile))
    )
    # Labels from day 1 to the end of the history: most find an activity row, a few (early) may not.
    label_path = str(Path(work.home) / "labels")
    (
        spark.range(labels)
        .select(
            _customer(F.pmod(F.col("id") * 104_729, F.lit(customers))).alias(activity.entity_key),
            F.timestamp_micros(
                F.lit(START_US + 86_400_000_000) + (F.rand(seed=7) * (SPAN_S - 86_400) * 1_000_000).cast("long")
            ).alias("label_ts"),
            (F.rand(seed=8) < 0.1).cast("int").alias("label"),
        )
        .write.format("delta")
        .mode("overwrite")
        .save(label_path)
    )
    return {
        "customers": customers,
        "activity_rows": customers * per_customer,
        "profile_rows": customers,
        "labels": labels,
        "label_path": label_path,
    }


def _timed_training_set(spark: Any, plan: Any, work: Any, label_path: str) -> tuple[float, float, dict[str, int]]:
    """Build and materialize the training set: total seconds, seconds in the call itself, observed counts."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from common.models.training_set import create_training_set

    first_activity = plan.group("activity").feature_names[0]
    first_profile = plan.group("profile").feature_names[0]
    started = time.perf_counter()
    labels = spark.read.format("delta").load(label_path)
    result = create_training_set(labels, ["activity.*", "profile.*"], plan=plan, work=work, time_column="label_ts")
    call_s = time.perf_counter() - started
    # Counted in the same pass as the write: a second count() would run the whole join again.
    seen = Observation("training_set")
    observed = result.frame.observe(
        seen,
        F.count(F.lit(1)).alias("rows"),
        F.count(first_activity).alias("with_activity"),
        F.count(first_profile).alias("with_profile"),
    )
    observed.write.format("noop").mode("overwrite").save()
    counts = {k: int(v) for k, v in seen.get.items()}
    return time.perf_counter() - started, call_s, counts


def _jvm_cpu_s(spark: Any) -> float | None:
    """CPU seconds the driver JVM has used (in local mode, every task's thread too); None where the OS does not say.

    On a shared machine the wall time of one run swings with the others' load; the CPU a
    measurement used swings far less, so comparisons quote both.
    """
    used = spark._jvm.java.lang.ProcessHandle.current().info().totalCpuDuration()
    return used.get().toNanos() / 1e9 if used.isPresent() else None


def _cpu_between(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 1)


def _floor_seconds(spark: Any, plan: Any, work: Any) -> float:
    """The read floor: seconds to read the needed columns of both histories once, with a count."""
    from pyspark.sql import functions as F

    from common.lake.paths import history_path

    started = time.perf_counter()
    for name in ("activity", "profile"):
        group = plan.group(name)
        needed = [group.entity_key, "feature_ts", *group.feature_names]
        frame = spark.read.format("delta").load(history_path(work, group)).select(*needed)
        # A count over every needed column: a bare count() would be answered from Delta's statistics.
        frame.agg(F.count(F.lit(1)), *[F.count(c) for c in needed]).collect()
    return time.perf_counter() - started


def _backfill_rate(spark: Any, quick: bool) -> dict[str, Any]:
    """Generated churn landing files -> bronze (not timed) -> ``backfill`` of every group (timed)."""
    from common.compile import compile_usecase
    from common.features.backfill import backfill
    from common.generate import GenerateOptions, generate_landing
    from common.ingest.stream import ingest_source
    from common.spec import load_usecase

    throwaway_keys()
    customers, days = (500, 7) if quick else (10_000, 14)
    home = Path(tempfile.mkdtemp(prefix="loom-bench-backfill-"))
    try:
        work, spec = Paths(home), load_usecase("churn")
        plan = compile_usecase(spec)
        generate_landing(spec, work, GenerateOptions(customers=customers, days=days, rows_per_file=50_000))
        events = sum(ingest_source(spark, spec, name, work, "batch").accepted for name in ("customers", "events"))
        started = time.perf_counter()
        reports = backfill(spark, work, plan)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(home, ignore_errors=True)
    rows = sum(r.rows for r in reports)
    return {"events": events, "rows": rows, "seconds": seconds, "customers": customers, "days": days}


def _feast_python() -> Path | None:
    """The bench-only Feast virtualenv's interpreter (``make feast-venv``), when it exists."""
    python = Path(__file__).resolve().parents[1] / ".cache" / "feast-venv" / "bin" / "python"
    return python if python.exists() else None


def _export_for_feast(spark: Any, plan: Any, work: Any, label_path: str, folder: Path) -> Path:
    """Histories and labels as Parquet (what Feast's file offline store reads); returns the spec file."""
    from pyspark.sql import functions as F

    from common.lake.paths import history_path

    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    views = []
    for name in ("activity", "profile"):
        group = plan.group(name)
        path = folder / name
        frame = spark.read.format("delta").load(history_path(work, group))
        frame.select(group.entity_key, "feature_ts", *group.feature_names).write.mode("overwrite").parquet(str(path))
        views.append({"name": name, "path": str(path), "ttl_s": group.ttl_s, "features": list(group.feature_names)})
    labels = spark.read.format("delta").load(label_path).withColumn("label_ts", F.col("label_ts"))
    labels.coalesce(1).write.mode("overwrite").parquet(str(folder / "labels"))
    key = plan.group("activity").entity_key
    spec = {"entity": key, "time_column": "label_ts", "labels": str(folder / "labels"), "views": views}
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    return spec_path


def _feast_seconds(python: Path, spec_path: Path) -> dict[str, Any]:
    """Run Feast's ``get_historical_features`` in its own virtualenv; seconds and rows, or why not."""
    script = Path(__file__).with_name("feast_historical.py")
    try:
        done = subprocess.run(
            [str(python), str(script), str(spec_path)], capture_output=True, text=True, timeout=FEAST_LIMIT_S
        )
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {FEAST_LIMIT_S} s"}
    if done.returncode != 0:
        # The last line that names an error (warnings also go to stderr), and the exit code:
        # a negative one is the signal that ended it, e.g. -9 when the kernel ran out of memory.
        # A traceback ends with "SomeError: message"; warnings that merely mention errors do not count.
        errors = [line for line in done.stderr.splitlines() if re.match(r"^[\w.]*(Error|Exception)\b", line)]
        return {"error": f"exit code {done.returncode}: {(errors or ['no error message'])[-1].strip()[:200]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _shared_size(spark: Any, plan: Any, quick: bool) -> dict[str, Any] | None:
    """Feast and Loom at the largest ladder size Feast completes; None when Feast is not installed."""
    python = _feast_python()
    if python is None:
        return None
    best: dict[str, Any] = {"error": "no size completed"}
    for sizes in _feast_ladder(quick):
        home = Path(tempfile.mkdtemp(prefix="loom-bench-tset-feast-"))
        try:
            work = Paths(home)
            inputs = _write_inputs(spark, plan, work, sizes)
            feast = _feast_seconds(python, _export_for_feast(spark, plan, work, inputs["label_path"], home / "feast"))
            if "error" in feast:
                best.setdefault("stopped", f"{sizes[2]:,} labels: {feast['error']}")
                break
            loom_s, _, counts = _timed_training_set(spark, plan, work, inputs["label_path"])
            best = {"sizes": sizes, "feast": feast, "loom_s": loom_s, "loom_rows": counts["rows"]}
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return best


def _shared_rows(shared: dict[str, Any] | None) -> list[dict[str, Any]]:
    if shared is None:
        note = "Feast not installed: run `make feast-venv` (bench-only virtualenv, never .venv)"
        return [{"metric": "Feast get_historical_features", "value": None, "unit": "label rows/s", "note": note}]
    if "sizes" not in shared:
        return [{"metric": "Feast get_historical_features", "value": None, "unit": "label rows/s", "note": str(shared)}]
    customers, per_customer, labels = shared["sizes"]
    feast, loom_s = shared["feast"], shared["loom_s"]
    if feast["rows"] != labels:
        raise RuntimeError(f"Feast returned {feast['rows']:,} rows for {labels:,} labels")
    note = (
        f"{labels:,} labels over {customers * per_customer:,} history rows: the largest size Feast 0.67 "
        f"(file offline store) completed within {FEAST_LIMIT_S} s; {shared.get('stopped', 'no larger size tried')}"
    )
    ratio = feast["seconds"] / loom_s
    return [
        {
            "metric": "Feast get_historical_features (shared size)",
            "value": round(labels / feast["seconds"], 1),
            "unit": "label rows/s",
            "target": None,
            "note": note,
        },
        {
            "metric": "Loom training set (shared size)",
            "value": round(labels / loom_s, 1),
            "unit": "label rows/s",
            "target": None,
            "note": note,
        },
        {
            "metric": "Loom / Feast speed (shared size)",
            "value": round(ratio, 2),
            "unit": "x",
            "target": ">= 2",
            "note": f"Feast {feast['seconds']:.2f} s, Loom {loom_s:.2f} s",
        },
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """Loom's training set, the read floor, Feast at a shared size and the backfill rate, in one run."""
    from common.compile import compile_usecase
    from common.spec import load_usecase

    plan = compile_usecase(load_usecase("churn"))
    home = Path(tempfile.mkdtemp(prefix="loom-bench-tset-"))
    work = Paths(home)
    rows: list[dict[str, Any]] = [machine_load_row()]
    try:
        with local_spark("training-set") as spark:
            started = time.perf_counter()
            sizes = _write_inputs(spark, plan, work, _sizes(quick))
            setup_s = time.perf_counter() - started
            _timed_training_set(spark, plan, work, sizes["label_path"])  # warm-up: JIT, Delta log caches
            cpu = [_jvm_cpu_s(spark)]
            seconds, call_s, counts = _timed_training_set(spark, plan, work, sizes["label_path"])
            cpu.append(_jvm_cpu_s(spark))
            floor_s = _floor_seconds(spark, plan, work)
            cpu.append(_jvm_cpu_s(spark))
            shutil.rmtree(home, ignore_errors=True)
            shared = _shared_size(spark, plan, quick)
            filled = _backfill_rate(spark, quick)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    labels = sizes["labels"]
    if counts["rows"] != labels:
        raise RuntimeError(
            f"training set has {counts['rows']:,} rows for {labels:,} labels: rows were lost or duplicated"
        )
    features = sizes["activity_rows"] + sizes["profile_rows"]
    activity_n = len(plan.group("activity").feature_names)
    profile_n = len(plan.group("profile").feature_names)
    note = (
        f"{labels:,} labels over {sizes['activity_rows']:,} activity + {sizes['profile_rows']:,} profile rows "
        f"({sizes['customers']:,} customers, {activity_n}+{profile_n} features), local[2], Delta inputs, noop sink"
    )
    rows += [
        {
            "metric": "training set (activity.* + profile.*)",
            "value": round(labels / seconds, 1),
            "unit": "label rows/s",
            "target": TARGET,
            "note": note,
        },
        {"metric": "training set wall time", "value": round(seconds, 2), "unit": "s", "target": None, "note": note},
        {
            "metric": "of which: the call (Delta versions, label min/max)",
            "value": round(call_s, 2),
            "unit": "s",
            "target": None,
            "note": "before the join runs: Delta snapshots and history look-ups, one pass over the labels",
        },
        {
            "metric": "feature history rows read",
            "value": features,
            "unit": "rows",
            "target": None,
            "note": f"{round(features / seconds, 1):,} feature rows/s through the join",
        },
        {
            "metric": "output rows (must equal labels)",
            "value": counts["rows"],
            "unit": "rows",
            "target": None,
            "note": f"{labels:,} labels",
        },
        {
            "metric": "labels with an activity value",
            "value": round(counts["with_activity"] / labels, 4),
            "unit": "fraction",
            "target": None,
            "note": f"profile: {round(counts['with_profile'] / labels, 4)}",
        },
        {
            "metric": "read floor: needed history columns once, with a count",
            "value": round(floor_s, 2),
            "unit": "s",
            "target": None,
            "note": f"{round(labels / floor_s, 1):,} label rows/s if the join cost only the read",
        },
        {
            "metric": "Loom / read floor speed",
            "value": round(floor_s / seconds, 3),
            "unit": "fraction",
            "target": ">= 0.6",
            "note": f"floor {floor_s:.2f} s, training set {seconds:.2f} s (either this or >= 100000 rows/s)",
        },
        {
            "metric": "CPU used: training set / read floor",
            "value": _cpu_between(cpu[0], cpu[1]),
            "unit": "CPU s",
            "target": None,
            "note": f"read floor {_cpu_between(cpu[1], cpu[2])} CPU s; the driver JVM's CPU time (local[2]: all tasks), "
            "steadier than wall time on a loaded machine",
        },
        {
            "metric": "input generation (not timed above)",
            "value": round(setup_s, 2),
            "unit": "s",
            "target": None,
            "note": "Delta writes of history and labels",
        },
        {
            "metric": "backfill: bronze -> feature history",
            "value": round(filled["events"] / filled["seconds"], 1),
            "unit": "events/s",
            "target": None,
            "note": (
                f"{filled['events']:,} bronze rows ({filled['customers']:,} customers × {filled['days']} days) -> "
                f"{filled['rows']:,} history rows in {filled['seconds']:.2f} s, every group"
            ),
        },
    ]
    return rows + _shared_rows(shared)
