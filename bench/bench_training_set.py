"""Point-in-time training sets: ``create_training_set`` throughput in label rows/s, on local[2].

Builds, in a temporary LOOM_HOME, synthetic feature history Delta tables for the
churn use case's groups (laid out as ``loom backfill`` writes them: entity key,
``feature_ts``, one double per feature, ``_schema_version``, ``_date`` partition)
and a Delta table of label rows whose times fall inside the history range. Then
times ``create_training_set(labels, ["activity.*", "profile.*"])`` end to end:
Delta version look-ups, the label min/max query and the full join, materialized
with the ``noop`` sink. Writing the inputs is not timed and nothing is cached.

Full size: 1M labels over 10M ``activity`` rows (100k customers × 100 rows over
30 days) plus 100k ``profile`` rows. Target from DESIGN.md §4. The Feast peer
(``get_historical_features``) is not installed here and is not measured.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import local_spark, machine_load_row

NAME = "training_set"
START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z: first activity row
SPAN_S = 30 * 86_400  # activity history covers 30 days
TARGET = ">= 100000"
PEER_NOTE = "Feast get_historical_features (peer) not installed here: not measured"


def _sizes(quick: bool) -> tuple[int, int, int]:
    """(customers, activity rows per customer, labels)."""
    return (2_000, 100, 20_000) if quick else (100_000, 100, 1_000_000)


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


def _write_inputs(spark: Any, plan: Any, work: Any, quick: bool) -> dict[str, Any]:
    """Write the activity and profile histories and the label table; return their sizes and paths."""
    from pyspark.sql import functions as F

    from common.features.offline import PARTITION, SCHEMA_VERSION, history_path

    customers, per_customer, labels = _sizes(quick)
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


def _scan_seconds(spark: Any, plan: Any, work: Any) -> float:
    """Seconds to read both history tables alone (noop sink): the floor under the join."""
    from common.features.offline import history_path

    started = time.perf_counter()
    for group in ("activity", "profile"):
        spark.read.format("delta").load(history_path(work, plan.group(group))).write.format("noop").mode(
            "overwrite"
        ).save()
    return time.perf_counter() - started


def run(quick: bool) -> list[dict[str, Any]]:
    """Write synthetic inputs, then time ``create_training_set`` once; ``quick`` uses tiny sizes."""
    from common.compile import compile_usecase
    from common.settings import Paths
    from common.spec import load_usecase

    plan = compile_usecase(load_usecase("churn"))
    home = Path(tempfile.mkdtemp(prefix="loom-bench-tset-"))
    work = Paths(home)
    rows: list[dict[str, Any]] = [machine_load_row()]
    try:
        with local_spark("training-set") as spark:
            started = time.perf_counter()
            sizes = _write_inputs(spark, plan, work, quick)
            setup_s = time.perf_counter() - started
            seconds, call_s, counts = _timed_training_set(spark, plan, work, sizes["label_path"])
            scan_s = _scan_seconds(spark, plan, work)
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
        f"({sizes['customers']:,} customers, {activity_n}+{profile_n} features), local[2], Delta inputs, noop sink; "
        f"{PEER_NOTE}"
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
            "metric": "history scan alone (noop)",
            "value": round(scan_s, 2),
            "unit": "s",
            "target": None,
            "note": "read both history tables, no join: the floor under the wall time",
        },
        {
            "metric": "input generation (not timed above)",
            "value": round(setup_s, 2),
            "unit": "s",
            "target": None,
            "note": "Delta writes of history and labels",
        },
    ]
    return rows
