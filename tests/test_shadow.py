"""Concluding a shadow period (common.models.shadow) on hand-made tables and a real registry.

The end-to-end path (training puts a winner under @shadow, the running stream
scores it beside the champion, ``retrain`` promotes it) is in
tests/test_retraining_loop.py; here the verdict rule itself, with values
computed by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from common.compile import compile_usecase
from common.models import registry
from common.models.shadow import RESULT_TAG, SHADOW, current_shadow, start_shadow
from common.monitoring.retrain import decide
from common.monitoring.shadow import conclude_shadow
from common.settings import Paths
from common.spec import load_usecase

D = datetime(2026, 1, 10, tzinfo=UTC)
# eight customers, one firing each at D; their outcomes one day later: four churned, four stayed
LABELS = [1, 1, 1, 1, 0, 0, 0, 0]
# champion v1 ranks badly: of the 16 (churned, stayed) pairs only 0.6 > 0.5 and 0.6 > 0.4 are ordered: AUC 2/16
V1 = [0.2, 0.3, 0.6, 0.1, 0.7, 0.5, 0.4, 0.8]
# shadow v2 ranks every churned customer above every other one: AUC 1.0
V2 = [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.4]


def _shadow_rule(min_labels: int):
    def mutate(documents):
        model = documents["models.yaml"]["models"]["churn"]
        model["evaluation"] = {"label_delay": "2 days", "bucket": "1 day"}
        model["promotion"] = {
            "metric": "roc_auc",
            "min_improvement": 0.002,
            "shadow": "1 hour",
            "shadow_min_labels": min_labels,
        }

    return mutate


def _world(spark, tmp_path, *, champion_scores, shadow_scores, min_labels=8, until=None):
    """Outcomes in bronze, v1's stream predictions and v2's shadow predictions of the same firings,
    and a registry with v1 @champion and v2 @shadow (its period over unless ``until`` says otherwise)."""
    from common.lake.paths import bronze_path, predictions_path
    from common.runtime.tracking import experiment
    from tests.spec_helpers import mutated_churn

    work = Paths(tmp_path / "work")
    plan = compile_usecase(load_usecase(mutated_churn(tmp_path / "metadata", _shadow_rule(min_labels))))
    customers = [f"c{i}" for i in range(len(LABELS))]
    spark.createDataFrame(
        [(c, D + timedelta(days=1), y) for c, y in zip(customers, LABELS, strict=True)],
        "customer_id string, label_ts timestamp, churned int",
    ).write.format("delta").save(bronze_path(work, "churn", "outcomes"))
    schema = (
        "customer_id string, trigger string, firing_ts timestamp, event_id string, score double, "
        "model_name string, model_version int"
    )
    for kind, version, scores in (("stream", 1, champion_scores), (SHADOW, 2, shadow_scores)):
        rows = [
            (c, "t", D, f"e{i}", s, "churn", version) for i, (c, s) in enumerate(zip(customers, scores, strict=True))
        ]
        spark.createDataFrame(rows, schema).write.format("delta").save(predictions_path(work, "churn", kind))
    client = registry.client(work)
    experiment_id = experiment("loom-churn", work)
    client.create_registered_model("churn")
    for version in (1, 2):
        run = client.create_run(experiment_id, run_name=f"train-churn-v{version}")
        client.set_terminated(run.info.run_id)
        client.create_model_version("churn", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_model_version_tag("churn", "2", "loom.decision", "holdout: v2 beats v1")
    registry.promote("churn", 1, "test setup", client)
    start_shadow("churn", 2, until or datetime.now(UTC) - timedelta(minutes=1), client)
    return SimpleNamespace(work=work, plan=plan, client=client)


def test_a_better_shadow_is_promoted_on_its_own_firings(spark, tmp_path):
    world = _world(spark, tmp_path, champion_scores=V1, shadow_scores=V2)
    verdict = conclude_shadow(spark, world.plan, "churn", world.work)
    assert verdict.promoted and verdict.matched == 8
    assert verdict.runtime == pytest.approx({"champion": 2 / 16, SHADOW: 1.0})
    assert registry.version_by_alias("churn", "champion", world.client) == 2
    assert current_shadow("churn", world.client) is None  # the alias is gone
    assert world.client.get_model_version("churn", "2").tags[RESULT_TAG].startswith("shadow v2 of churn: promoted")
    assert conclude_shadow(spark, world.plan, "churn", world.work) is None  # nothing left to conclude


def test_a_worse_shadow_is_not_promoted_whatever_its_holdout_said(spark, tmp_path):
    world = _world(spark, tmp_path, champion_scores=V2, shadow_scores=V1)
    verdict = conclude_shadow(spark, world.plan, "churn", world.work)
    assert not verdict.promoted and verdict.runtime == pytest.approx({"champion": 1.0, SHADOW: 2 / 16})
    assert "-0.8750" in verdict.why  # 2/16 - 1.0, in the promotion metric's units
    assert registry.version_by_alias("churn", "champion", world.client) == 1
    assert current_shadow("churn", world.client) is None


def test_too_few_outcomes_leave_the_holdout_verdict_standing(spark, tmp_path):
    world = _world(spark, tmp_path, champion_scores=V2, shadow_scores=V1, min_labels=9)
    verdict = conclude_shadow(spark, world.plan, "churn", world.work)
    assert verdict.promoted and verdict.runtime is None and verdict.matched == 8
    assert "only 8 shadow firings have outcomes (< 9)" in verdict.why and "holdout: v2 beats v1" in verdict.why
    assert registry.version_by_alias("churn", "champion", world.client) == 2


def test_nothing_is_concluded_or_retrained_while_the_shadow_runs(spark, tmp_path):
    until = datetime.now(UTC) + timedelta(hours=1)
    world = _world(spark, tmp_path, champion_scores=V1, shadow_scores=V2, until=until)
    assert conclude_shadow(spark, world.plan, "churn", world.work) is None
    assert current_shadow("churn", world.client).version == 2
    decision = decide(spark, world.plan, "churn", world.work, force=False)
    assert not decision.due and "shadow v2 runs until" in decision.checks[-1]
    assert decide(spark, world.plan, "churn", world.work, force=True).due  # --force still retrains
    # once the period is over, conclude_shadow judges it
    verdict = conclude_shadow(spark, world.plan, "churn", world.work, at=until + timedelta(seconds=1))
    assert verdict is not None and verdict.promoted
