"""Model metadata: references, errors that name the path and the fix, on-demand
transforms equal to their Spark counterparts, metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from common.compile import compile_usecase
from common.compile.transforms import columns_for
from common.errors import ConfigError, DataError, SpecError, SpecErrors
from common.models.estimators import build_estimator
from common.models.metrics import evaluate, improvement
from common.models.on_demand import apply_on_demand
from common.models.train import decide, time_split
from common.spec import load_usecase
from common.spec.models import Estimator
from common.spec.transforms import BucketizeTransform, ClipTransform, FillTransform, LogTransform, RatioTransform
from tests.spec_helpers import mutated_churn

CHURN = load_usecase("churn")


def _model(documents):
    return documents["models.yaml"]["models"]["churn"]


def _errors(tmp_path, mutate) -> list[SpecError]:
    with pytest.raises(SpecError) as caught:
        compile_usecase(load_usecase(mutated_churn(tmp_path, mutate)))
    err = caught.value
    return err.errors if isinstance(err, SpecErrors) else [err]


def test_the_sample_model_resolves_wildcards_in_reference_order():
    model = compile_usecase(CHURN).model("churn")
    activity = [f.name for f in CHURN.feature_groups["activity"].features]
    assert model.feature_spec.lookup_features[: len(activity)] == tuple(activity)
    assert model.feature_spec.lookup_features[len(activity) :] == (
        "tenure_days",
        "monthly_fee",
        "is_business",
        "plan_premium",
        "plan_gigabit",
    )
    assert model.inputs[-2:] == ("calls_per_outage_7d", "log_streaming_minutes_1d")
    assert model.feature_spec.groups[0].ttl_s == 30 * 86400


def test_unknown_feature_reference_names_the_path_and_the_fix(tmp_path):
    (err,) = _errors(tmp_path, lambda d: _model(d)["features"].append("activity.nope"))
    assert err.path == "models.churn.features[6]" and err.file.endswith("models.yaml")
    assert "no feature 'nope'" in str(err) and "support_calls_7d" in err.fix


def test_malformed_reference_explains_the_syntax(tmp_path):
    (err,) = _errors(tmp_path, lambda d: _model(d)["features"].append("activity"))
    assert "<feature group>.<feature>" in err.fix


def test_unknown_estimator_key_and_bad_cron_are_reported(tmp_path):
    def mutate(d):
        _model(d)["estimator"]["klass"] = "x"
        _model(d)["schedule"] = "every sunday"

    errors = _errors(tmp_path, mutate)
    assert {e.path for e in errors} == {"models.churn.estimator.klass", "models.churn.schedule"}


def test_label_time_must_be_a_column_of_the_label_source(tmp_path):
    (err,) = _errors(tmp_path, lambda d: _model(d)["label"].update(time="decided_at"))
    assert err.path == "models.churn.label.time" and "label_ts" in err.fix


def test_on_demand_reading_a_non_feature_is_refused(tmp_path):
    def mutate(d):
        _model(d)["on_demand"].append({"name": "x", "fn": "log", "input": "email"})

    (err,) = _errors(tmp_path, mutate)
    assert "not a model feature" in str(err) and err.path == "models.churn.on_demand[2]"


def test_a_feature_selected_from_two_groups_is_a_compile_error(tmp_path):
    def mutate(d):
        groups = d["features.yaml"]["feature_groups"]
        groups["profile"]["features"].append({"name": "outages_7d", "expr": "monthly_fee"})
        _model(d)["features"].append("profile.outages_7d")

    (err,) = _errors(tmp_path, mutate)
    assert "in both 'activity' and 'profile'" in str(err)


def test_estimator_errors_name_the_class_and_the_extra():
    with pytest.raises(SpecError, match="cannot import module"):
        build_estimator(Estimator.model_validate({"class": "sklearn.nothing.Here"}), "models.m.estimator")
    with pytest.raises(SpecError, match="rejects its params"):
        build_estimator(
            Estimator.model_validate({"class": "sklearn.linear_model.LogisticRegression", "params": {"bogus": 1}}),
            "models.m.estimator",
        )
    with pytest.raises(SpecError, match="no predict_proba"):
        build_estimator(Estimator.model_validate({"class": "sklearn.linear_model.LinearRegression"}), "m")
    try:
        import xgboost  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"loom\[xgboost\]"):
            build_estimator(Estimator.model_validate({"class": "xgboost.XGBClassifier"}), "m")


ON_DEMAND = [
    FillTransform(name="a_filled", fn="fill", input="a", value=-1),
    ClipTransform(name="a_clipped", fn="clip", input="a", min=0, max=5),
    BucketizeTransform(name="a_bucket", fn="bucketize", input="a", splits=[0, 1, 10]),
    RatioTransform(name="a_per_b", fn="ratio", numerator="a", denominator="b"),
    LogTransform(name="log_a", fn="log", input="a"),
]


def test_on_demand_transforms_equal_the_spark_transforms(spark):
    values = [(-2.0, 0.0), (0.0, 2.0), (0.5, None), (1.0, 4.0), (7.5, -3.0), (10.0, 1.0), (None, 1.0), (42.0, 0.0)]
    frame = pd.DataFrame(values, columns=["a", "b"], dtype="float64")
    ours = apply_on_demand(frame, [t.model_dump(mode="json") for t in ON_DEMAND])
    sdf = spark.createDataFrame(values, "a double, b double")
    for transform in ON_DEMAND:
        sdf = sdf.withColumns(dict(columns_for(transform)))
    theirs = sdf.toPandas()
    for transform in ON_DEMAND:
        left = ours[transform.name].astype("float64").to_numpy()
        right = theirs[transform.name].astype("float64").to_numpy()
        assert np.allclose(left, right, equal_nan=True), transform.name


def test_metrics_against_hand_computed_values():
    labels = [0, 0, 1, 1, 1, 0]
    scores = [0.1, 0.6, 0.35, 0.8, 0.9, 0.2]
    got = evaluate(labels, scores, ["roc_auc", "precision", "recall", "accuracy", "brier", "log_loss"], 0.5)
    # positives 0.35, 0.8, 0.9 vs negatives 0.1, 0.6, 0.2: 8 of 9 pairs ordered right
    assert got["roc_auc"] == pytest.approx(8 / 9)
    assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == pytest.approx(2 / 3)
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["brier"] == pytest.approx((0.01 + 0.36 + 0.4225 + 0.04 + 0.01 + 0.04) / 6)
    expected_ll = -sum(math.log(p if y else 1 - p) for y, p in zip(labels, scores, strict=True)) / 6
    assert got["log_loss"] == pytest.approx(expected_ll)
    assert improvement("roc_auc", 0.8, 0.7) == pytest.approx(0.1)
    assert improvement("log_loss", 0.4, 0.5) == pytest.approx(0.1)


def test_time_split_holds_out_the_latest_labels():
    times = pd.date_range("2026-01-01", periods=100, freq="h")
    frame = pd.DataFrame({"t": times, "label": [i % 2 for i in range(100)]}).sample(frac=1, random_state=1)
    split = time_split(frame, "t", 0.2)
    assert len(split.holdout) == 20 and split.train["t"].max() < split.holdout["t"].min() == split.cutoff


def test_time_split_refuses_a_holdout_with_one_class():
    frame = pd.DataFrame({"t": pd.date_range("2026-01-01", periods=100, freq="h"), "label": [1] * 50 + [0] * 50})
    with pytest.raises(DataError, match="both classes"):
        time_split(frame, "t", 0.2)


def test_promotion_rule():
    model = compile_usecase(CHURN).model("churn")  # roc_auc, min_improvement 0.002
    assert decide(model, 1, 0.70, (None, None, "no champion yet"))[0]
    assert decide(model, 3, 0.805, (2, 0.80, ""))[0]
    promoted, why = decide(model, 3, 0.801, (2, 0.80, ""))
    assert not promoted and "stays @challenger" in why and "+0.0010" in why
