"""Score firings inside ``foreachBatch``, exactly once.

For each micro-batch of firings: resolve each model's alias (hot redeploy: the
registry is asked at most every ``refresh_s`` seconds, so a moved @champion is
used from the next micro-batch on), take the entity's features as of the
firing (the value REST would return at that moment): the groups the trigger
operator carries come with the firing, computed from its state
(common/triggers/shared_state.py); any other group the model reads is
recomputed from bronze (common.features.at_times). Then score with ``mlflow.pyfunc.spark_udf`` and write

* the predictions Delta table and the actions table (score >= threshold), each
  an idempotent append keyed by ``txnAppId``/``txnVersion`` = the batch id, so
  a replayed batch never writes twice;
* the latest prediction per entity and model in Redis, guarded by time;
* while a model has a @shadow version (``promotion.shadow``), the same firings
  scored by it to ``predictions/shadow`` (idempotent too; no actions, no Redis).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import reduce
from typing import Any

import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.compile.event_time import to_micros
from common.compile.feature_spec import FeatureSpec
from common.compile.plan import GroupPlan, Plan
from common.compile.triggers import TriggerPlan
from common.features.at_times import features_at
from common.features.streaming import OnlineWriter, history_app_id, write_vector_rows
from common.lake.append import DRIVER_ROWS, append_once, append_rows_once
from common.lake.delta import table_exists
from common.lake.paths import predictions_path
from common.models import registry
from common.models.scoring import ModelRef, model_feature_spec
from common.models.shadow import SHADOW
from common.online.predictions import LatestPrediction, write_latest
from common.runtime.log import Stopwatch
from common.settings import Paths
from common.triggers.operator import FIRING_TS
from common.triggers.shared_state import FEATURES, GROUP

log = logging.getLogger("loom.triggers")

# The least and greatest firing time of a trigger's firings in a batch (naive UTC, as collect() returns them)
Bounds = tuple[datetime | None, datetime | None]

# Firings scored per Spark task: every task of the scoring stage loads the model (``spark_udf`` loads it per
# partition), so a micro-batch's few firings go to one task, not to one per shuffle partition.
SCORE_ROWS_PER_TASK = 10_000


@dataclass
class ModelResolver:
    """Alias -> version, re-read from the registry at most every ``refresh_s`` seconds."""

    work: Paths
    refresh_s: float = 0.0
    _seen: dict[tuple[str, str], tuple[float, int | None]] = field(default_factory=dict)
    _specs: dict[tuple[str, int], FeatureSpec] = field(default_factory=dict)
    _udfs: dict[tuple[str, int], Any] = field(default_factory=dict)
    _client: Any = None

    def version(self, name: str, alias: str) -> int | None:
        now = time.monotonic()
        cached = self._seen.get((name, alias))
        if cached is None or now - cached[0] >= self.refresh_s:
            if self._client is None:
                self._client = registry.client(self.work)
            version = registry.version_by_alias(name, alias, self._client)
            if cached is not None and cached[1] != version:
                log.info("model %s@%s moved: v%s -> v%s", name, alias, cached[1], version)
            self._seen[(name, alias)] = (now, version)
            return version
        return cached[1]

    def spec(self, ref: ModelRef) -> FeatureSpec:
        if (ref.name, ref.version) not in self._specs:
            started = time.monotonic()
            self._specs[(ref.name, ref.version)] = model_feature_spec(ref, self.work)
            log.info("feature spec of %s read in %.1fs", ref, time.monotonic() - started)
        return self._specs[(ref.name, ref.version)]

    def udf(self, spark: SparkSession, ref: ModelRef) -> Any:
        import mlflow

        if (ref.name, ref.version) not in self._udfs:
            started = time.monotonic()
            self._udfs[(ref.name, ref.version)] = mlflow.pyfunc.spark_udf(
                spark, ref.uri, result_type="double", env_manager="local"
            )
            log.info("spark_udf of %s made in %.1fs", ref, time.monotonic() - started)
        return self._udfs[(ref.name, ref.version)]

    def warm(self, spark: SparkSession, triggers: list[TriggerPlan]) -> None:
        """Resolve each trigger's model and make its feature spec and ``spark_udf`` now, not in the first
        micro-batch (MLflow's import, the registry's store, the model's download): run in a thread while
        ingestion works, the first batch finds them ready. A failure is left to the batch, which reports it."""
        started = time.monotonic()
        try:
            for trigger in triggers:
                version = self.version(trigger.model, trigger.alias)
                if version is not None:
                    ref = ModelRef(trigger.model, version, trigger.alias)
                    self.spec(ref)
                    self.udf(spark, ref)
        except Exception as err:  # the first batch resolves again and raises it where it belongs
            log.warning("models not warmed (%s): the first trigger batch loads them", err)
            return
        log.info("models of %d trigger(s) ready in %.1fs", len(triggers), time.monotonic() - started)

    def warm_in_background(self, spark: SparkSession, triggers: list[TriggerPlan]) -> threading.Thread:
        """:meth:`warm` in a daemon thread; join it before the trigger queries start."""
        thread = threading.Thread(target=self.warm, args=(spark, triggers), name="loom-warm-models", daemon=True)
        thread.start()
        return thread


def firing_features(
    spark: SparkSession,
    work: Paths,
    plan: Plan,
    spec: FeatureSpec,
    firings: DataFrame,
    carried: Sequence[str],
    bounds: Bounds | None = None,
) -> DataFrame:
    """``firings`` plus the features ``spec`` reads as of each firing, and ``_<group>_ts``: from the firing's
    :data:`FEATURES` for the ``carried`` groups (their value at the firing event, whose time is theirs),
    from bronze for the others (:func:`features_at`; none: no re-read). ``bounds``: the firings' least and
    greatest time, when known (:func:`features_at`)."""
    others = tuple(g for g in spec.groups if g.name not in carried)
    rows = firings
    if others:
        rows = features_at(spark, work, plan, replace(spec, groups=others), firings, FIRING_TS, bounds)
    mine = [g for g in spec.groups if g.name in carried]
    if not mine:
        return rows
    values = F.from_json(F.col(FEATURES), "map<string,map<string,double>>")
    return rows.select(
        "*",
        *[values[g.name][name].alias(name) for g in mine for name in g.selected],
        *[F.col(FIRING_TS).alias(f"_{g.name}_ts") for g in mine],
    )


def _unscored(trigger: TriggerPlan, base: DataFrame) -> DataFrame:
    return base.select(
        "*",
        F.lit(None).cast("map<string,double>").alias("features"),
        F.lit(None).cast("double").alias("score"),
        F.lit(trigger.model).alias("model_name"),
        F.lit(None).cast("int").alias("model_version"),
    )


def _scored(spark: SparkSession, resolver: ModelResolver, key: str, with_features: DataFrame, ref: ModelRef):
    """The firings (with the features ``ref`` reads) scored by ``ref``, with a features snapshot."""
    spec = resolver.spec(ref)
    udf = resolver.udf(spark, ref)
    names = list(spec.lookup_features)
    snapshot = F.map_from_arrays(
        F.array(*[F.lit(n) for n in names]), F.array(*[F.col(n).cast("double") for n in names])
    )
    return with_features.select(
        F.col(key),
        F.col("trigger"),
        F.col(FIRING_TS),
        F.col("event_id"),
        snapshot.alias("features"),
        udf(*[F.col(c) for c in (key, *names)]).alias("score"),
        F.lit(ref.name).alias("model_name"),
        F.lit(ref.version).alias("model_version"),
    )


def _score_model(
    spark: SparkSession,
    work: Paths,
    plan: Plan,
    resolver: ModelResolver,
    trigger: TriggerPlan,
    firings: DataFrame,
    count: int,
    carried: Sequence[str] = (),
    bounds: Bounds | None = None,
    clock: Stopwatch | None = None,
) -> tuple[DataFrame, DataFrame | None]:
    """Firings of one trigger (``count`` rows) scored by the trigger's alias (features, score, model name and
    version), and by the model's @shadow when one runs beside it (else None). ``carried``: the groups whose
    values the firings carry (:func:`firing_features`); ``bounds``: the firings' least and greatest time;
    ``clock``: the batch's, which gets a lap per step (registry look-ups, plans)."""
    clock = clock or Stopwatch()
    tasks = max(1, math.ceil(count / SCORE_ROWS_PER_TASK))
    key = trigger.entity_key
    version = resolver.version(trigger.model, trigger.alias)
    clock.lap("registry")
    base = firings.select(key, "trigger", FIRING_TS, "event_id")
    with_carried = firings.select(key, "trigger", FIRING_TS, "event_id", FEATURES) if carried else base
    if version is None:
        log.warning(
            "trigger %s fired but %s@%s does not exist: firings recorded without a score",
            trigger.name,
            trigger.model,
            trigger.alias,
        )
        return _unscored(trigger, base), None
    ref = ModelRef(trigger.model, version, trigger.alias)
    spec = resolver.spec(ref)
    with_features = firing_features(spark, work, plan, spec, with_carried, carried, bounds).coalesce(tasks)
    scored = _scored(spark, resolver, key, with_features, ref)
    clock.lap("plan")
    model = plan.models.get(trigger.model)
    shadow = resolver.version(trigger.model, SHADOW) if model and model.spec.promotion.shadow else None
    clock.lap("registry")
    if shadow is None or shadow == version:
        return scored, None
    shadow_ref = ModelRef(trigger.model, shadow, SHADOW)
    shadow_spec = resolver.spec(shadow_ref)
    if shadow_spec.groups != spec.groups:  # it reads other features: compute them
        with_features = firing_features(spark, work, plan, shadow_spec, with_carried, carried, bounds).coalesce(tasks)
    shadow_scored = _scored(spark, resolver, key, with_features, shadow_ref)
    clock.lap("plan")
    return scored, shadow_scored


def _append_scored(table: Any, frame: DataFrame, path: str, app_id: str, batch_id: int) -> None:
    """Append the scored firings (``table``, the Arrow rows of ``frame``) once: from the driver when the table
    exists and the batch is small, as :func:`append_once` would, without collecting them again; else ``frame``
    through :func:`append_once` (Spark's writer creates the table, or writes a large batch)."""
    if table.num_rows > DRIVER_ROWS or not append_rows_once(table, path, app_id, batch_id):
        append_once(frame, path, app_id, batch_id)


@dataclass(frozen=True)
class VectorSink:
    """Where a trigger operator's vectors go (the carried groups': ``groups[i]`` is the operator's group ``i``):
    the online store and the offline history, as the groups' own feature queries would write them."""

    spark: SparkSession
    work: Paths
    groups: Sequence[GroupPlan]
    write_online: OnlineWriter
    query_name: str  # the trigger query's: its id (kept in the checkpoint) names the histories' appends
    app_ids: dict[str, str] = field(default_factory=dict)  # txnAppId per group, found on the first batch

    def write(self, batch: DataFrame, counts: dict[int, int], batch_id: int) -> None:
        """Each group's vector rows of ``batch`` (``counts[i]`` of group ``i``), written once per batch id."""
        for index, entities in sorted(counts.items()):
            group = self.groups[index]
            if group.name not in self.app_ids:
                self.app_ids[group.name] = f"{history_app_id(self.spark, self.query_name)}-{group.name}"
            app_id = self.app_ids[group.name]
            rows = batch.where(F.col(GROUP) == index)
            write_vector_rows(self.spark, self.work, group, rows, entities, self.write_online, app_id, batch_id)


def make_firing_handler(
    spark: SparkSession,
    work: Paths,
    plan: Plan,
    triggers: list[TriggerPlan],
    redis_client: Any,
    resolver: ModelResolver,
    app_id: str,
    carried: Sequence[str] = (),
    vectors: VectorSink | None = None,
) -> Callable[[DataFrame, int], None]:
    """The ``foreachBatch`` function of a source's trigger query; ``carried``: the groups whose values its
    firings carry (common/triggers/shared_state.py); ``vectors``: where the carried groups' vectors go when the
    operator emits them."""
    by_name = {t.name: t for t in triggers}
    predictions = predictions_path(work, plan.usecase, "stream")
    shadow_predictions = predictions_path(work, plan.usecase, SHADOW)
    actions = predictions_path(work, plan.usecase, "actions")

    def handle(batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        clock = Stopwatch()
        batch = batch.cache()
        try:
            # one job: the operator's firings, counted per trigger with their time bounds (features_at's), and
            # its vectors counted per group (trigger null)
            keys = ["trigger", GROUP] if GROUP in batch.columns else ["trigger"]
            summary = (
                batch.groupBy(*keys)
                .agg(F.count(F.lit(1)).alias("count"), F.min(FIRING_TS).alias("first"), F.max(FIRING_TS).alias("last"))
                .collect()
            )
            per_trigger = {r["trigger"]: r for r in summary if r["trigger"] is not None}
            counts = {name: r["count"] for name, r in per_trigger.items()}
            clock.lap("firings")
            if vectors is not None:
                vectors.write(batch, {r[GROUP]: r["count"] for r in summary if r["trigger"] is None}, batch_id)
                clock.lap("vectors")
            if not counts:
                return
            parts = [
                _score_model(
                    spark,
                    work,
                    plan,
                    resolver,
                    by_name[name],
                    batch.where(F.col("trigger") == name),
                    counts[name],
                    carried,
                    (per_trigger[name]["first"], per_trigger[name]["last"]),
                    clock,
                )
                for name in sorted(counts)
            ]
            thresholds = F.create_map(*[x for t in triggers for x in (F.lit(t.name), F.lit(t.threshold))])

            def with_action(frames: list[DataFrame]) -> DataFrame:
                return reduce(DataFrame.unionByName, frames).withColumns(
                    {"action": F.col("score") >= thresholds[F.col("trigger")], "batch_id": F.lit(batch_id).cast("long")}
                )

            shadowed = [s for _, s in parts if s is not None]
            if shadowed:  # logged beside the champion's rows, never acted on
                append_once(with_action(shadowed), shadow_predictions, f"{app_id}-shadow", batch_id)
            rows = with_action([p for p, _ in parts]).cache()  # for an append through Spark's writer
            try:
                # features as of each firing and the scores, computed once and collected: the appends and Redis
                # read this Arrow table, not a Spark job each
                table = rows.toArrow()
                clock.lap("features+score")
                _append_scored(table, rows, predictions, app_id, batch_id)
                acted = table.filter(pc.equal(table["action"], True))  # null (no score) is no action
                if not table_exists(spark, actions) or acted.num_rows:
                    _append_scored(acted, rows.where("action"), actions, app_id, batch_id)
                clock.lap("appends")
            finally:
                rows.unpersist()
            collected = table.filter(pc.is_valid(table["score"])).to_pylist()
            key = triggers[0].entity_key
            written = write_latest(
                redis_client,
                plan.usecase,
                plan.version,
                (
                    LatestPrediction(
                        r[key],
                        r["model_name"],
                        to_micros(r[FIRING_TS]),  # aware, or naive UTC: as Arrow returns it
                        r["score"],
                        r["model_version"],
                        r["trigger"],
                    )
                    for r in collected
                ),
            )
            clock.lap("redis")
            newest = max((r[FIRING_TS] for r in collected), default=None)
            seconds = time.monotonic() - started
            lag = (datetime.now(UTC) - newest.replace(tzinfo=UTC)).total_seconds() if newest else float("nan")
            log.info(
                "triggers batch %d: %d firings %s, %d scored, %d actions, redis %d, %.1fs (%.0f firings/s; %s), "
                "lag %.1fs, versions %s",
                batch_id,
                sum(counts.values()),
                counts,
                len(collected),
                sum(1 for r in collected if r["action"]),
                written,
                seconds,
                sum(counts.values()) / seconds if seconds else 0.0,
                clock,
                lag,
                sorted({(r["model_name"], r["model_version"]) for r in collected}),
            )
        finally:
            batch.unpersist()

    return handle
