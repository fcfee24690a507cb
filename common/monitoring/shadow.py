"""Concluding a shadow period: the champion's and the shadow's scores of the same firings, judged by outcomes.

The shadow starts at training (:mod:`common.models.shadow`); ``loom retrain`` calls
:func:`conclude_shadow` once its period is over. The verdict uses the evaluation's own
matching rule (:mod:`common.monitoring.matching`), so it sits here, above ``models``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from common.compile.plan import Plan
from common.lake.delta import table_exists
from common.lake.paths import predictions_path
from common.models import registry
from common.models.metrics import evaluate, improvement
from common.models.shadow import RESULT_TAG, SHADOW, Shadow, current_shadow
from common.monitoring.matching import MATCHED, STATUS, labels_through, match_outcomes
from common.monitoring.settings import settings_of
from common.monitoring.sources import LABEL, PREDICTION_TS, read_outcomes
from common.settings import Paths

log = logging.getLogger("loom.models")


@dataclass
class ShadowVerdict:
    """How a concluded shadow period was judged."""

    shadow: Shadow
    champion: int | None
    promoted: bool
    why: str
    matched: int = 0
    runtime: dict[str, float] | None = None  # {"champion": value, "shadow": value} when judged at runtime

    def render(self) -> str:
        verb = "promoted to @champion" if self.promoted else "not promoted"
        return f"shadow v{self.shadow.version} of {self.shadow.model}: {verb}: {self.why}"


def _paired_outcomes(spark: SparkSession, work: Paths, plan: Plan, model_name: str, champion: int, shadow: int):
    """Matched (label, champion score, shadow score) of the firings both versions scored."""
    model = plan.model(model_name)
    stream, shadowed = predictions_path(work, plan.usecase, "stream"), predictions_path(work, plan.usecase, SHADOW)
    if not (table_exists(spark, stream) and table_exists(spark, shadowed)):
        return None
    key = model.entity_key
    firing = ["trigger", "event_id"]

    def scores(path: str, version: int, alias: str):
        return (
            spark.read.format("delta")
            .load(path)
            .where((F.col("model_name") == model_name) & (F.col("model_version") == version))
            .where(F.col("score").isNotNull())
            .select(key, *firing, "firing_ts", F.col("score").alias(alias))
            .dropDuplicates(firing)
        )

    pairs = scores(stream, champion, "champion").join(scores(shadowed, shadow, SHADOW).drop(key, "firing_ts"), firing)
    pairs = pairs.select(
        F.col(key).cast("string").alias(key),
        F.col("firing_ts").cast("timestamp").alias(PREDICTION_TS),
        "champion",
        SHADOW,
    )
    outcomes = read_outcomes(spark, work, plan.usecase, model, plan.spec.sources.get(model.label_source))
    delay = settings_of(model.spec).label_delay_s
    matched = match_outcomes(pairs, outcomes, key, delay, labels_through(outcomes)).where(F.col(STATUS) == MATCHED)
    return matched.select(LABEL, "champion", SHADOW).toPandas()


def conclude_shadow(
    spark: SparkSession, plan: Plan, model_name: str, work: Paths, *, at: datetime | None = None
) -> ShadowVerdict | None:
    """Judge and end the shadow of ``model_name`` when its period is over (None when there is none
    or it is still running). See the module doc for the rule."""
    client = registry.client(work)
    shadow = current_shadow(model_name, client)
    at = (at or datetime.now(UTC)).astimezone(UTC)
    if shadow is None or not shadow.over(at):
        return None
    rule = plan.model(model_name).spec.promotion
    champion = registry.version_by_alias(model_name, registry.CHAMPION, client)
    verdict = ShadowVerdict(shadow, champion, False, "")
    if champion is None or champion == shadow.version:
        verdict.promoted = champion is None
        verdict.why = "no champion to compare with" if champion is None else "it is already @champion"
    else:
        pairs = _paired_outcomes(spark, work, plan, model_name, champion, shadow.version)
        verdict.matched = 0 if pairs is None else len(pairs)
        if verdict.matched >= rule.shadow_min_labels:
            labels = pairs["label"].to_numpy()
            threshold = plan.model(model_name).spec.threshold
            values = {
                role: evaluate(labels, pairs[role].to_numpy(), [rule.metric], threshold)[rule.metric]
                for role in ("champion", SHADOW)
            }
            verdict.runtime = values
            gain = improvement(rule.metric, values[SHADOW], values["champion"])
            verdict.promoted = gain >= rule.min_improvement
            verdict.why = (
                f"{rule.metric} on {verdict.matched} shadow firings with outcomes: v{shadow.version} "
                f"{values[SHADOW]:.4f} vs champion v{champion} {values['champion']:.4f}: {gain:+.4f} "
                f"(needs >= {rule.min_improvement:+.4f})"
            )
        else:
            verdict.promoted = True
            verdict.why = (
                f"only {verdict.matched} shadow firings have outcomes (< {rule.shadow_min_labels}): "
                f"the holdout verdict stands ({_holdout_verdict(client, model_name, shadow.version)})"
            )
    if verdict.promoted and champion != shadow.version:
        registry.promote(model_name, shadow.version, f"after shadow: {verdict.why}", client)
    client.delete_registered_model_alias(model_name, SHADOW)
    client.set_model_version_tag(model_name, str(shadow.version), RESULT_TAG, verdict.render()[:5000])
    log.info("%s", verdict.render())
    return verdict


def _holdout_verdict(client: Any, name: str, version: int) -> str:
    return client.get_model_version(name, str(version)).tags.get("loom.decision", "no decision recorded")
