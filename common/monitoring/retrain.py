"""The retraining policy: when ``loom retrain`` trains a challenger.

Retraining is due when any of these holds (``models.<name>.retrain``):

* ``--force`` (a schedule that always retrains passes it);
* the model has no registered version, or no ``@champion``;
* ``on_schedule`` and the model's ``schedule`` (cron, UTC) ticked after the
  latest version was created and at or before ``at``;
* ``on_drift`` and the newest drift result of the champion (the latest
  ``window_end`` in ``monitoring/drift``) has a feature or the score over its
  threshold;
* ``min_metric`` and, in ``monitoring/metrics``, the champion's latest bucket
  (all paths together) with at least ``min_labels`` matched outcomes and a
  defined metric has that metric below ``below``.

While a version is under @shadow (``promotion.shadow``), nothing retrains
(except ``--force``); once its period is over, ``retrain`` first concludes it
(``common.monitoring.shadow.conclude_shadow``: promote or not) and leaves the next
retraining decision to the next run.

Drift and metric results count only when computed after the latest version was
created: a retraining is never repeated on the evidence that caused it (even
when its challenger was not promoted); the next ``loom evaluate`` brings new
evidence. When due, ``common.models.train.train_model`` trains, registers the
challenger and promotes it by the promotion rule, as ``loom train`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from common.compile.plan import Plan
from common.models import registry
from common.models.shadow import current_shadow
from common.monitoring.evaluate import ALL_PATHS
from common.monitoring.settings import MonitoringSettings, settings_of
from common.monitoring.shadow import ShadowVerdict, conclude_shadow
from common.monitoring.tables import DRIFT, METRICS, read_table
from common.settings import Paths

log = logging.getLogger("loom.monitoring")
REASON_TAG = "loom.retrain_reason"


@dataclass
class Decision:
    """Whether to retrain, why, and what was checked without finding a reason."""

    model: str
    at: datetime
    reasons: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    champion: int | None = None
    latest: int | None = None

    @property
    def due(self) -> bool:
        return bool(self.reasons)

    def render(self) -> str:
        head = f"retrain {self.model}: " + ("due" if self.due else "not due")
        lines = [head, *[f"  because {r}" for r in self.reasons], *[f"  checked: {c}" for c in self.checks]]
        return "\n".join(lines)


@dataclass
class RetrainResult:
    """The decision, the training outcome when it was due, and a shadow concluded on the way."""

    decision: Decision
    outcome: Any = None  # common.models.train.TrainOutcome
    shadow: ShadowVerdict | None = None

    def render(self) -> str:
        text = "" if self.shadow is None else self.shadow.render() + "\n"
        text += self.decision.render()
        if self.outcome is not None:
            text += "\n" + self.outcome.render()
        return text


def latest_version(client: Any, name: str) -> tuple[int, datetime] | None:
    """The newest registered version of ``name`` and when it was created (None when there is none)."""
    found = client.search_model_versions(f"name = '{name}'")
    if not found:
        return None
    newest = max(found, key=lambda v: int(v.version))
    return int(newest.version), datetime.fromtimestamp(newest.creation_timestamp / 1000, UTC)


def _schedule_check(decision: Decision, cron: str, since: datetime, version: int) -> None:
    from croniter import croniter

    tick = croniter(cron, since).get_next(datetime)
    if tick <= decision.at:
        decision.reasons.append(
            f"schedule {cron!r} ticked at {tick:%Y-%m-%d %H:%M} UTC since v{version} was trained ({since:%Y-%m-%d %H:%M})"
        )
    else:
        decision.checks.append(f"schedule {cron!r}: next retraining at {tick:%Y-%m-%d %H:%M} UTC")


def _drift_check(
    decision: Decision, spark: SparkSession, work: Paths, plan: Plan, champion: int, since: datetime
) -> None:
    table = read_table(spark, work, plan.usecase, DRIFT)
    rows = (
        None
        if table is None
        else table.where(
            (F.col("model_name") == decision.model)
            & (F.col("model_version") == champion)
            & (F.col("computed_at") > F.lit(since))
        )
    )
    newest = None if rows is None else rows.agg(F.max("window_end")).first()[0]
    if newest is None:
        decision.checks.append(
            f"drift: none computed for v{champion} since v{decision.latest} was trained (run `loom evaluate`)"
        )
        return
    latest = rows.where(F.col("window_end") == F.lit(newest)).toPandas()
    over = latest[latest["drifted"]].sort_values("psi", ascending=False)
    if over.empty:
        decision.checks.append(f"drift: nothing over the thresholds in the window ending {newest:%Y-%m-%d %H:%M}")
        return
    shown = ", ".join(
        f"{r.feature} (psi {r.psi:.3f}" + ("" if pd.isna(r.ks) else f", ks {r.ks:.3f}") + ")" for r in over.itertuples()
    )
    first = over.iloc[0]
    decision.reasons.append(
        f"drift on {len(over)} of {len(latest)} features/score in the window ending {newest:%Y-%m-%d %H:%M} "
        f"(thresholds psi {first.psi_threshold:g}, ks {first.ks_threshold:g}): {shown}"
    )


def _metric_check(
    decision: Decision,
    spark: SparkSession,
    work: Paths,
    plan: Plan,
    champion: int,
    since: datetime,
    settings: MonitoringSettings,
) -> None:
    rule = settings.retrain.min_metric
    if rule is None:
        return
    table = read_table(spark, work, plan.usecase, METRICS)
    rows = (
        pd.DataFrame()
        if table is None
        else table.where(
            (F.col("model_name") == decision.model)
            & (F.col("model_version") == champion)
            & (F.col("path") == ALL_PATHS)
            & (F.col("evaluated_at") > F.lit(since))
            & (F.col("matched") >= rule.min_labels)
            & F.col(rule.metric).isNotNull()
        )
        .orderBy(F.col("bucket").desc())
        .limit(1)
        .toPandas()
    )
    if rows.empty:
        decision.checks.append(
            f"{rule.metric}: no bucket of v{champion} with >= {rule.min_labels} matched outcomes evaluated since "
            f"v{decision.latest} was trained (run `loom evaluate`)"
        )
        return
    row = rows.iloc[0]
    value, bucket = float(row[rule.metric]), pd.Timestamp(row["bucket_start"])
    text = f"{rule.metric} {value:.3f} of v{champion} in the bucket from {bucket:%Y-%m-%d %H:%M} ({row['matched']} matched)"
    if value < rule.below:
        decision.reasons.append(f"{text} is below {rule.below:g}")
    else:
        decision.checks.append(f"{text} is not below {rule.below:g}")


def decide(
    spark: SparkSession,
    plan: Plan,
    model_name: str,
    work: Paths,
    *,
    at: datetime | None = None,
    force: bool = False,
    settings: MonitoringSettings | None = None,
) -> Decision:
    """Apply the retraining policy (module doc) to ``model_name`` at ``at`` (default now)."""
    model = plan.model(model_name)
    settings = settings or settings_of(model.spec)
    client = registry.client(work)
    decision = Decision(model_name, (at or datetime.now(UTC)).astimezone(UTC))
    if force:
        decision.reasons.append("--force")
    latest = latest_version(client, model_name)
    if latest is None:
        decision.reasons.append("no version is registered yet")
        return decision
    decision.latest, since = latest
    decision.champion = registry.version_by_alias(model_name, registry.CHAMPION, client)
    if decision.champion is None:
        decision.reasons.append("there is no @champion")
        return decision
    shadow = current_shadow(model_name, client)
    if shadow is not None and not force:
        state = "ended" if shadow.over(decision.at) else "runs"
        decision.reasons.clear()
        decision.checks.append(
            f"shadow v{shadow.version} {state} until {shadow.until:%Y-%m-%d %H:%M} UTC: "
            "no retraining until it is concluded (`loom retrain` concludes it once it has ended)"
        )
        return decision
    rule = settings.retrain
    if rule.on_schedule and settings.schedule:
        _schedule_check(decision, settings.schedule, since, decision.latest)
    if rule.on_drift:
        _drift_check(decision, spark, work, plan, decision.champion, since)
    _metric_check(decision, spark, work, plan, decision.champion, since, settings)
    return decision


def retrain(
    spark: SparkSession,
    plan: Plan,
    model_name: str,
    work: Paths,
    *,
    at: datetime | None = None,
    force: bool = False,
    settings: MonitoringSettings | None = None,
    dry_run: bool = False,
    train: Callable[..., Any] | None = None,
) -> RetrainResult:
    """Decide, and when due train a challenger (registered, promoted by the promotion rule).

    ``train`` defaults to ``common.models.train.train_model``.
    """
    concluded = None if dry_run else conclude_shadow(spark, plan, model_name, work, at=at)
    if concluded is not None and not force:
        # the evidence gathered during the shadow judged that version; new evidence decides the next retraining
        decision = Decision(model_name, (at or datetime.now(UTC)).astimezone(UTC), champion=concluded.champion)
        decision.checks.append(f"shadow v{concluded.shadow.version} concluded: the next run decides on retraining")
    else:
        decision = decide(spark, plan, model_name, work, at=at, force=force, settings=settings)
    log.info(
        "retrain %s: %s (%s)", model_name, "due" if decision.due else "not due", "; ".join(decision.reasons) or "-"
    )
    if not decision.due or dry_run:
        return RetrainResult(decision, shadow=concluded)
    if train is None:
        from common.models.train import train_model as train
    outcome = train(spark, plan, model_name, work)
    if outcome.version is not None:
        registry.client(work).set_model_version_tag(
            model_name, str(outcome.version), REASON_TAG, "; ".join(decision.reasons)[:5000]
        )
    return RetrainResult(decision, outcome, concluded)
