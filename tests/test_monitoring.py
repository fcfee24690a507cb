"""Runtime evaluation, drift and the retraining policy.

Real components throughout: Delta tables in a temporary work folder, a sqlite
MLflow store with a local artifact folder, and (for the one retraining) the
demo's churn data of ``churn_lake``. Expected values are computed by hand in the
comments next to them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from croniter import croniter
from scipy.stats import ks_2samp

from common.compile import compile_usecase
from common.models import registry
from common.models.profile import compare, ks_statistic, proportions, psi, training_profile
from common.monitoring.drift import compute_drift
from common.monitoring.evaluate import evaluate_model
from common.monitoring.retrain import decide
from common.monitoring.settings import MonitoringSettings
from common.settings import Paths
from common.spec import load_usecase
from common.spec.monitoring import DriftRule, Evaluation, MinMetric, Retrain

D = datetime(2026, 1, 10, tzinfo=UTC)
SETTINGS = MonitoringSettings(
    evaluation=Evaluation(label_delay="2 days", bucket="1 day"),
    drift=DriftRule(psi=0.2, ks=0.2, window="7 days"),
    retrain=Retrain(on_drift=True, min_metric=MinMetric(metric="roc_auc", below=0.7, min_labels=2)),
    threshold=0.5,
)


def _t(days: float = 0, hours: float = 0) -> datetime:
    return D + timedelta(days=days, hours=hours)


# outcomes: (customer, label_ts, churned)
OUTCOMES = [
    ("A", _t(1), 1),
    ("B", _t(hours=12), 0),
    ("C", _t(1), 1),
    ("D", _t(-1), 1),  # before D's first prediction: never its outcome
    ("D", _t(3), 1),  # after D's day-1 window (p + 2 days), inside its day-2 window
    ("E", _t(2), 0),  # exactly p + label_delay: still matched
    ("F", _t(0), 0),  # exactly at p: matched, and it is F's first outcome...
    ("F", _t(1), 1),  # ...so this later one is not used
    ("I", _t(2, 18), 0),
    ("J", _t(2, 20), 0),
    ("K", _t(2, 20), 1),
]
# batch predictions of v1 at D: (customer, score)
BATCH = [("A", 0.9), ("B", 0.8), ("C", 0.3), ("D", 0.2), ("E", 0.6), ("F", 0.1)]
# stream predictions: (customer, firing_ts, score, version)
STREAM = [
    ("A", _t(hours=6), 0.7, 1),
    ("G", _t(hours=6), 0.4, 1),  # no outcome, window closed before the newest label (D + 3 days): expired
    ("H", _t(2, 12), 0.5, 2),  # no outcome, window still open: pending
    ("D", _t(2, 12), 0.95, 2),
    ("I", _t(2, 12), 0.2, 2),
    ("J", _t(2, 12), 0.7, 2),
    ("K", _t(2, 12), 0.1, 2),
]


def _write(spark, rows, schema, path):
    spark.createDataFrame(rows, schema).write.format("delta").mode("overwrite").save(path)


@pytest.fixture(scope="module")
def mini(spark, tmp_path_factory):
    """A tiny hand-made world: outcomes in bronze, batch and stream predictions of model ``churn`` v1/v2
    (no REST table), and a sqlite MLflow store whose registry has v1 and v2 on runs of their own."""
    from common.lake.paths import bronze_path, predictions_path
    from common.runtime.tracking import experiment

    work = Paths(tmp_path_factory.mktemp("monitoring-mini"))
    plan = compile_usecase(load_usecase("churn"))
    _write(
        spark,
        [(c, t, y) for c, t, y in OUTCOMES],
        "customer_id string, label_ts timestamp, churned int",
        bronze_path(work, "churn", "outcomes"),
    )
    batch = [(c, D, s, "churn", 1, D) for c, s in BATCH] + [("A", D, 0.99, "other", 1, None)]
    _write(
        spark,
        batch,
        "customer_id string, prediction_ts timestamp, score double, model_name string, model_version int, "
        "scored_at timestamp",
        predictions_path(work, "churn", "batch"),
    )
    stream = [(c, "t", t, f"e{i}", {"x": 1.0}, s, "churn", v, s >= 0.5, 0) for i, (c, t, s, v) in enumerate(STREAM)]
    stream.append(("Z", "t", _t(hours=6), "e9", None, None, "churn", None, None, 0))  # no model yet
    _write(
        spark,
        stream,
        "customer_id string, trigger string, firing_ts timestamp, event_id string, features map<string,double>, "
        "score double, model_name string, model_version int, action boolean, batch_id long",
        predictions_path(work, "churn", "stream"),
    )
    client = registry.client(work)
    experiment_id = experiment("loom-churn", work)
    client.create_registered_model("churn")
    runs = {}
    for version in (1, 2):
        run = client.create_run(experiment_id, run_name=f"train-churn-v{version}")
        client.set_terminated(run.info.run_id)
        created = client.create_model_version("churn", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        assert int(created.version) == version
        runs[version] = run.info.run_id
    registry.promote("churn", 2, "test setup", client)
    _drift_world(spark, work, plan, client, runs[2])
    return SimpleNamespace(work=work, plan=plan, client=client, runs=runs)


DAY = 86400.0
# training set of the champion (v2): failed_payments_30d and outages_1h, and its holdout scores
TRAIN_X = [0.0] * 5 + [1.0] * 3 + [2.0] * 2
TRAIN_Y = [1.0] * 10
TRAIN_SCORES = [0.1, 0.2, 0.3, 0.4]
# feature history of group activity (ttl 30 days); drift window (D - 4 days, D + 3 days]:
# (customer, feature_ts, failed_payments_30d) -> days served inside the window
HISTORY = [
    ("P1", _t(-5), 0.0),  # before the window, current at its start: served 3 days (until P1's next row)
    ("P1", _t(-1), 2.0),  # 4 days, until the window's end
    ("P2", _t(-21), 1.0),  # 7 days: the whole window (within its ttl)
    ("P3", _t(2), None),  # 1 day, missing
    ("P4", _t(-64), 5.0),  # older than ttl at the window's start: not served in the window
    ("P5", _t(4), 7.0),  # after the window
    ("P6", _t(-31), 3.0),  # expires (ttl) 3 days into the window: 3 days
]
AT = _t(3)


def _drift_world(spark, work, plan, client, run_id):
    """Feature history, and the champion's feature spec and training profile on its run."""
    from common.compile.feature_spec import FeatureSpec, GroupRef
    from common.lake.paths import history_path
    from common.models.profile import PROFILE_FILE, training_profile

    rows = [(c, t, x, 1.0, t.date()) for c, t, x in HISTORY]
    _write(
        spark,
        rows,
        "customer_id string, feature_ts timestamp, failed_payments_30d double, outages_1h double, _date date",
        history_path(work, plan.group("activity")),
    )
    group = plan.group("activity")
    spec = FeatureSpec(
        usecase="churn",
        usecase_version=plan.version,
        model="churn",
        entity="customer",
        entity_key="customer_id",
        groups=(
            GroupRef(
                "activity", ("failed_payments_30d", "outages_1h"), group.ttl_s, ("failed_payments_30d", "outages_1h")
            ),
        ),
    )
    client.log_text(run_id, spec.to_json(), "feature_spec.json")
    frame = pd.DataFrame({"failed_payments_30d": TRAIN_X, "outages_1h": TRAIN_Y})
    profile = training_profile(frame, ["failed_payments_30d", "outages_1h"], TRAIN_SCORES)
    client.log_dict(run_id, profile, PROFILE_FILE)


def _row(rows: pd.DataFrame, version: int, path: str, day: int) -> pd.Series:
    bucket = int((D + timedelta(days=day)).timestamp()) // 86400
    found = rows[(rows["model_version"] == version) & (rows["path"] == path) & (rows["bucket"] == bucket)]
    assert len(found) == 1, (version, path, day, rows[["model_version", "path", "bucket"]])
    return found.iloc[0]


@pytest.fixture(scope="module")
def evaluated(spark, mini):
    return evaluate_model(spark, mini.plan, "churn", mini.work, settings=SETTINGS)


@pytest.fixture(scope="module")
def drifted(spark, mini):
    return compute_drift(spark, mini.plan, "churn", mini.work, at=AT, settings=SETTINGS)


def test_evaluation_metrics_match_hand_computed_values(evaluated):
    rows = evaluated.rows
    assert evaluated.missing == ["rest", "shadow"] and set(evaluated.found) == {"batch", "stream"}
    assert evaluated.labels_through.replace(tzinfo=UTC) == _t(3)

    batch = _row(rows, 1, "batch", 0)
    # matched (score, label): A .9/1, B .8/0, C .3/1, E .6/0, F .1/0; D has no outcome in [p, p+2d]: expired
    assert (batch.volume, batch.matched, batch.pending, batch.expired, batch.positives) == (6, 5, 0, 1, 2)
    assert batch.roc_auc == pytest.approx(4 / 6)  # pairs won: .9 beats 3 negatives, .3 beats .1
    assert batch.precision == pytest.approx(1 / 3)  # predicted >= .5: A, B, E; only A churned
    assert batch.recall == pytest.approx(1 / 2)  # A found, C missed
    assert batch.mean_score == pytest.approx(2.7 / 5) and batch.observed_rate == pytest.approx(2 / 5)
    assert batch.ece == pytest.approx((0.1 + 0.8 + 0.7 + 0.6 + 0.1) / 5)  # one prediction per bin

    stream = _row(rows, 1, "stream", 0)
    assert (stream.volume, stream.matched, stream.expired) == (2, 1, 1)  # A matched, G expired; Z has no score
    assert math.isnan(stream.roc_auc)  # one class only: undefined, not 0
    assert (stream.precision, stream.recall, stream.ece) == pytest.approx((1.0, 1.0, 0.3))

    both = _row(rows, 1, "all", 0)
    assert (both.volume, both.matched, both.expired) == (8, 6, 2)
    assert both.roc_auc == pytest.approx(6 / 9)  # .9 beats 3, .3 beats 1, .7 beats 2 of 3 negatives
    assert (both.precision, both.recall) == pytest.approx((2 / 4, 2 / 3))
    assert both.ece == pytest.approx((0.1 + 0.8 + 0.7 + 0.6 + 0.1 + 0.3) / 6)

    later = _row(rows, 2, "stream", 2)
    # H pending (its window is open past the newest label); D .95/1 (its day-3 outcome), I .2/0, J .7/0, K .1/1
    assert (later.volume, later.matched, later.pending, later.expired) == (5, 4, 1, 0)
    assert later.roc_auc == pytest.approx(2 / 4)  # .95 beats both negatives, .1 beats none
    assert (later.precision, later.recall) == pytest.approx((1 / 2, 1 / 2))  # >= .5: D (1), J (0)
    assert (later.mean_score, later.observed_rate) == pytest.approx((1.95 / 4, 2 / 4))
    assert later.ece == pytest.approx((0.05 + 0.2 + 0.7 + 0.9) / 4)
    assert set(rows["model_name"]) == {"churn"}  # the other model's prediction is not churn's
    assert evaluated.totals() == {"volume": 13, "matched": 10, "pending": 1, "expired": 2}


def test_evaluation_is_idempotent_in_delta_and_mlflow(spark, mini, evaluated):
    history = mini.client.get_metric_history(mini.runs[1], "eval_all_roc_auc")
    assert [(m.step, m.timestamp) for m in history] == [(int(D.timestamp()) // 86400, int(D.timestamp()) * 1000)]
    assert history[0].value == pytest.approx(6 / 9)
    artifacts = {a.path for a in mini.client.list_artifacts(mini.runs[2], "monitoring")}
    assert {"monitoring/evaluation.png", "monitoring/evaluation.json"} <= artifacts

    again = evaluate_model(spark, mini.plan, "churn", mini.work, settings=SETTINGS)
    assert again.logged == {1: 0, 2: 0}  # every point is already on the runs with the same value
    table = spark.read.format("delta").load(again.table)
    assert table.count() == len(evaluated.rows) == 5  # v1: batch, stream, all on day 0; v2: stream, all on day 2
    pd.testing.assert_frame_equal(
        again.rows.drop(columns="evaluated_at"), evaluated.rows.drop(columns="evaluated_at"), check_exact=True
    )
    assert len(mini.client.get_metric_history(mini.runs[1], "eval_all_roc_auc")) == 1


def _psi(expected, actual):
    floor = 1e-4
    return sum(
        (max(a, floor) - max(e, floor)) * math.log(max(a, floor) / max(e, floor))
        for e, a in zip(expected, actual, strict=True)
    )


def test_profile_psi_and_ks_match_hand_computed_values():
    profile = training_profile(pd.DataFrame({"x": TRAIN_X, "c": ["a"] * 6 + ["b"] * 3 + [None]}), ["x", "c"])
    x = profile["features"]["x"]
    # 10%..90% quantiles of 0 0 0 0 0 1 1 1 2 2 are 0 (x5), 1 (x3), 2: bins (<0) [0,1) [1,2) [2,inf) missing
    assert x["cuts"] == [0.0, 1.0, 2.0]
    assert x["proportions"] == pytest.approx([0, 0.5, 0.3, 0.2, 0])
    recent = pd.Series([0.0, 1.0, 2.0, 2.0, None])
    assert proportions(x, recent) == pytest.approx([0, 0.2, 0.2, 0.4, 0.2])
    assert psi(x["proportions"], [0, 0.2, 0.2, 0.4, 0.2]) == pytest.approx(
        (0.2 - 0.5) * math.log(0.2 / 0.5)
        + (0.2 - 0.3) * math.log(0.2 / 0.3)
        + (0.4 - 0.2) * math.log(0.4 / 0.2)
        + (0.2 - 1e-4) * math.log(0.2 / 1e-4)  # missing values appeared: the empty bin is floored at 1e-4
    )
    # KS over the non-missing values: F_train(0)=.5, F_recent(0)=.25; (1) .8 vs .5; (2) 1 vs 1
    assert ks_statistic(x, recent) == pytest.approx(0.3)
    assert ks_statistic(x, recent) == pytest.approx(ks_2samp(TRAIN_X, [0.0, 1.0, 2.0, 2.0]).statistic)
    # weights count like repeated rows
    assert compare(x, pd.Series([0.0, 1.0, 2.0]), [2, 1, 3]) == pytest.approx(
        compare(x, pd.Series([0.0, 0.0, 1.0, 2.0, 2.0, 2.0]))
    )
    # continuous values: 200 ECDF points, KS within 1/200 of scipy's
    rng = np.random.default_rng(3)
    train, now = rng.normal(0, 1, 5000), rng.normal(0.3, 1.2, 3000)
    entry = training_profile(pd.DataFrame({"v": train}), ["v"])["features"]["v"]
    assert len(entry["ecdf"]["values"]) == 200
    assert abs(ks_statistic(entry, pd.Series(now)) - ks_2samp(train, now).statistic) <= 1 / 200
    # categorical: shares of a, b, other, missing; no KS
    c = profile["features"]["c"]
    assert c["categories"] == ["a", "b"] and c["proportions"] == pytest.approx([0.6, 0.3, 0, 0.1])
    assert proportions(c, pd.Series(["a", "z", None, None])) == pytest.approx([0.25, 0, 0.25, 0.5])
    assert ks_statistic(c, pd.Series(["a"])) is None


def test_drift_weighs_online_values_by_the_time_they_were_served(spark, mini, drifted):
    rows = drifted.rows.set_index("feature")
    # days served in the window: x=0 3 (P1), x=2 4 (P1), x=1 7 (P2), missing 1 (P3), x=3 3 (P6, until its ttl)
    shares = [0, 3 / 18, 7 / 18, (4 + 3) / 18, 1 / 18]
    x = rows.loc["failed_payments_30d"]
    assert x.psi == pytest.approx(_psi([0, 0.5, 0.3, 0.2, 0], shares))
    # ECDF of the served values (weights in days): F(0)=3/17 vs .5 in training
    assert x.ks == pytest.approx(0.5 - 3 / 17)
    assert x.ks == pytest.approx(ks_2samp(TRAIN_X, [0.0] * 3 + [1.0] * 7 + [2.0] * 4 + [3.0] * 3).statistic)
    assert x.recent_missing == pytest.approx(1 / 18) and x.drifted
    y = rows.loc["outages_1h"]
    assert (y.psi, y.ks, y.drifted) == (0.0, 0.0, False)  # 1 everywhere, as in training
    score = rows.loc["score"]
    # v2's scores in the window: .95 .2 .5 .7 .1 (stream, D + 2.5 days) against holdout .1 .2 .3 .4
    assert score.rows == 5 and score.kind == "score"
    assert score.psi == pytest.approx(_psi([0, 0.25, 0.25, 0.25, 0.25, 0], [0, 0.2, 0.2, 0, 0.6, 0]))
    assert score.ks == pytest.approx(0.6)  # F_train(.4) = 1 vs F_recent(.4) = .4
    assert sorted(drifted.drifted) == ["failed_payments_30d", "score"]

    table = spark.read.format("delta").load(drifted.table)
    again = compute_drift(spark, mini.plan, "churn", mini.work, at=AT, settings=SETTINGS)
    assert table.count() == 3 and spark.read.format("delta").load(again.table).count() == 3  # replaced
    step = int(AT.timestamp())
    history = mini.client.get_metric_history(mini.runs[2], "drift_psi_failed_payments_30d")
    assert [(m.step, round(m.value, 9)) for m in history] == [(step, round(x.psi, 9))]
    assert "monitoring/drift.png" in {a.path for a in mini.client.list_artifacts(mini.runs[2], "monitoring")}


def _settings(**retrain) -> MonitoringSettings:
    schedule = retrain.pop("schedule", None)
    return MonitoringSettings(SETTINGS.evaluation, SETTINGS.drift, Retrain(**retrain), 0.5, schedule)


def test_retrain_policy_decisions(spark, mini, evaluated, drifted):
    def decide_with(settings, **options):
        return decide(spark, mini.plan, "churn", mini.work, settings=settings, **options)

    due = decide_with(SETTINGS)
    assert due.due and (due.champion, due.latest) == (2, 2)
    drift_reason, metric_reason = due.reasons
    assert "drift on 2 of 3" in drift_reason and "failed_payments_30d" in drift_reason and "score" in drift_reason
    # v2's latest bucket (D + 2 days): 4 matched outcomes, ROC AUC .5
    assert "roc_auc 0.500 of v2" in metric_reason and "below 0.7" in metric_reason

    calm = decide_with(_settings(on_drift=False, min_metric=MinMetric(metric="roc_auc", below=0.5, min_labels=2)))
    assert not calm.due and "roc_auc 0.500 of v2" in calm.checks[0] and "not below 0.5" in calm.checks[0]
    few = decide_with(_settings(on_drift=False, min_metric=MinMetric(metric="roc_auc", below=0.7, min_labels=5)))
    assert not few.due and "with >= 5 matched outcomes evaluated since v2 was trained" in few.checks[0]
    forced = decide_with(_settings(on_drift=False), force=True)
    assert forced.reasons == ["--force"]

    # the schedule ticked since the latest version was created (Sundays 03:00 UTC)
    created = datetime.fromtimestamp(mini.client.get_model_version("churn", "2").creation_timestamp / 1000, UTC)
    tick = croniter("0 3 * * 0", created).get_next(datetime)
    weekly = _settings(on_drift=False, schedule="0 3 * * 0")
    before = decide_with(weekly, at=tick - timedelta(seconds=1))
    assert not before.due and "next retraining at" in before.checks[0]
    assert "schedule '0 3 * * 0' ticked" in decide_with(weekly, at=tick).reasons[0]

    # evidence computed before the latest version does not count: no retraining twice on the same evidence
    run = mini.client.create_run(mini.client.get_run(mini.runs[2]).info.experiment_id)
    newer = mini.client.create_model_version("churn", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    try:
        after = decide_with(SETTINGS)
        assert not after.due and after.latest == int(newer.version)
        assert f"drift: none computed for v2 since v{newer.version} was trained" in after.checks[0]
    finally:
        mini.client.delete_model_version("churn", newer.version)


def test_evaluate_and_retrain_jobs_from_the_command_line(mini, monkeypatch, capsys):
    """The jobs with the metadata's settings (label delay 30 days, psi 0.2); runs last: it rewrites mini's rows."""
    from jobs import evaluate as evaluate_job
    from jobs import retrain as retrain_job
    from jobs.runner import main_for

    monkeypatch.setenv("LOOM_HOME", str(mini.work.home))
    assert main_for("evaluate", evaluate_job, ["--usecase", "churn", "--model", "churn", "--at", AT.isoformat()]) == 0
    out = capsys.readouterr().out
    assert "evaluated model churn: predictions from ['batch', 'stream'] (no table yet: ['rest', 'shadow'])" in out
    assert "drift of churn v2" in out and "failed_payments_30d" in out
    argv = ["--usecase", "churn", "--model", "churn", "--dry-run", "--at", AT.isoformat()]
    assert main_for("retrain", retrain_job, argv) == 0
    out = capsys.readouterr().out
    assert "retrain churn: due\n  because drift on 2 of 3" in out
    assert len(mini.client.search_model_versions("name = 'churn'")) == 2  # a dry run trains nothing
    assert main_for("evaluate", evaluate_job, ["--usecase", "churn", "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no model 'nope'" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def retrain_plan(tmp_path_factory):
    """The churn use case with a second model, ``churn_retrain`` (the churn model under another name),
    so that retraining does not change the registry state other tests see for ``churn``."""
    from tests.spec_helpers import mutated_churn

    def add_model(documents):
        documents["models.yaml"]["models"]["churn_retrain"] = dict(documents["models.yaml"]["models"]["churn"])

    return compile_usecase(load_usecase(mutated_churn(tmp_path_factory.mktemp("retrain-spec"), add_model)))


def test_retrain_trains_a_challenger_when_the_champion_drifted(spark, trained_churn, retrain_plan):
    """The one training of this module: drift on the demo data makes the policy retrain."""
    import mlflow

    from common.models.profile import load_training_profile
    from common.monitoring.reference import rebuild_profile
    from common.monitoring.retrain import REASON_TAG, retrain

    work, run_id = trained_churn.work, trained_churn.outcome.run_id
    client = registry.client(work)
    if load_training_profile(client, run_id) is None:  # trained before training logged the profile
        rebuild_profile(spark, trained_churn.plan, "churn", work, trained_churn.outcome.version)
    # the churn model's run registered as churn_retrain v1, @champion (no training)
    registered = mlflow.register_model(f"runs:/{run_id}/model", "churn_retrain")  # work's store: client() set it
    registry.promote("churn_retrain", int(registered.version), "test setup", client)
    settings = MonitoringSettings(Evaluation(), DriftRule(), Retrain(on_drift=True, on_schedule=False), 0.5)
    # on 2026-01-05 the 30-day windows hold 4 days of history; the model learned from labels of 01-08..01-15
    at = datetime(2026, 1, 5, tzinfo=UTC)
    drift = compute_drift(spark, retrain_plan, "churn_retrain", work, at=at, settings=settings)
    assert {"support_calls_30d", "outages_30d", "payment_sum_30d"} <= set(drift.drifted)
    assert drift.rows.set_index("feature").loc["tenure_days", "psi"] < 0.2  # slow-moving profile: no drift

    result = retrain(spark, retrain_plan, "churn_retrain", work, settings=settings)
    assert result.decision.due and result.decision.reasons[0].startswith(f"drift on {len(drift.drifted)} of")
    outcome = result.outcome
    assert outcome.version == 2 and registry.version_by_alias("churn_retrain", "challenger", client) == 2
    # promoted or not by the promotion rule (roc_auc, min_improvement 0.002), as `loom train` decides
    assert registry.version_by_alias("churn_retrain", "champion", client) == (2 if outcome.promoted else 1)
    assert "roc_auc" in outcome.decision and "v1" in outcome.decision
    assert client.get_model_version("churn_retrain", "2").tags[REASON_TAG] == result.decision.reasons[0]
    print(result.render())
    # the drift that caused it was computed before v2 existed: it does not cause another retraining
    again = decide(spark, retrain_plan, "churn_retrain", work, settings=settings)
    assert not again.due and "since v2 was trained" in again.checks[0]
