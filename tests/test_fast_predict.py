"""Fast predictors: they score like their estimator, survive their artifact, and a disagreeing one stops training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from common.errors import ModelError
from common.models import fast_predict
from common.models.on_demand import apply_on_demand, on_demand_columns


class TemperedBoosting(HistGradientBoostingClassifier):
    """A subclass that changes predict_proba (temperature 2): a converter reading the trees alone scores it wrongly."""

    def predict_proba(self, X):
        p = expit(self.decision_function(X) / 2.0)
        return np.column_stack([1 - p, p])


def _data(rows: int = 600, width: int = 8, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, width))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    return x, y


@pytest.mark.parametrize(
    "estimator, kind",
    [
        (HistGradientBoostingClassifier(max_iter=30, max_depth=3, random_state=1), "hist_gradient_boosting"),
        (HistGradientBoostingClassifier(max_iter=20, max_leaf_nodes=15, random_state=1), "hist_gradient_boosting"),
        (LogisticRegression(max_iter=300), "linear"),
    ],
)
def test_fast_predictor_scores_like_its_estimator_after_its_artifact_round_trip(estimator, kind):
    x, y = _data()
    if kind == "hist_gradient_boosting":  # missing values, in training and at scoring, follow the trees' rule
        x[np.random.default_rng(4).random(x.shape) < 0.1] = np.nan
    estimator.fit(x, y)
    built = fast_predict.build_fast_predictor(estimator)
    assert built is not None and built.kind == kind
    loaded = fast_predict.loads(fast_predict.dumps(built))
    assert type(loaded) is type(built)
    expected = estimator.predict_proba(x)[:, 1]
    assert np.abs(loaded.predict(x) - expected).max() <= 1e-12
    assert np.abs(loaded.predict(x[:1]) - expected[:1]).max() <= 1e-12  # one row, the REST case
    assert fast_predict.check_fast_predictor(loaded, estimator, x, model="m") <= 1e-12


def test_a_disagreeing_fast_predictor_is_refused_with_the_rows_and_the_gap():
    x, y = _data()
    estimator = TemperedBoosting(max_iter=20, max_depth=3, random_state=1).fit(x, y)
    built = fast_predict.build_fast_predictor(estimator)  # reads the trees, not the overridden predict_proba
    with pytest.raises(ModelError, match=r"model 'churn': the fast predictor \(hist_gradient_boosting\) disagrees"):
        fast_predict.check_fast_predictor(built, estimator, x, model="churn")
    try:
        fast_predict.check_fast_predictor(built, estimator, x, model="churn")
    except ModelError as err:
        message = str(err)
    assert "TemperedBoosting.predict_proba on the holdout" in message
    assert f"of {len(x)} rows differ by more than 1e-06" in message
    assert "Fix:" in message


def test_an_estimator_without_a_backend_keeps_its_own_predict():
    from sklearn.neighbors import KNeighborsClassifier

    x, y = _data(rows=100)
    assert fast_predict.build_fast_predictor(KNeighborsClassifier(3).fit(x, y)) is None


def test_numpy_transforms_equal_the_frame_adapter_bit_for_bit():
    transforms = [
        {"name": "a_filled", "fn": "fill", "input": "a", "value": -1},
        {"name": "a_clipped", "fn": "clip", "input": "a", "min": 0, "max": 5},
        {"name": "a_bucket", "fn": "bucketize", "input": "a", "splits": [0, 1, 10]},
        {"name": "a_per_b", "fn": "ratio", "numerator": "a", "denominator": "b"},
        {"name": "log_a", "fn": "log", "input": "a"},
        {"name": "log_ratio", "fn": "log", "input": "a_per_b"},  # reads an earlier output
    ]
    a = np.array([-2.0, 0.0, 0.5, 1.0, 7.5, 10.0, np.nan, 42.0, np.inf])
    b = np.array([0.0, 2.0, np.nan, 4.0, -3.0, 1.0, 1.0, 0.0, 2.0])
    frame = apply_on_demand(pd.DataFrame({"a": a, "b": b}), transforms)
    columns = on_demand_columns({"a": a, "b": b}, transforms)
    expected = {
        "a_filled": [-2, 0, 0.5, 1, 7.5, 10, -1, 42, np.inf],
        "a_bucket": [0, 1, 1, 2, 2, 3, np.nan, 3, 3],
        "a_per_b": [np.nan, 0, np.nan, 0.25, -2.5, 10, np.nan, np.nan, np.inf],
    }
    for name, values in expected.items():
        np.testing.assert_array_equal(columns[name], np.array(values, dtype=float))
    for transform in transforms:
        np.testing.assert_array_equal(frame[transform["name"]].to_numpy(), columns[transform["name"]])


@pytest.mark.spark
def test_training_fails_when_the_fast_predictor_disagrees(spark, churn_lake, monkeypatch):
    """The real training job, on the churn lake, with an estimator its fast predictor cannot follow."""
    import dataclasses

    from common.models.train import train_model
    from common.spec.models import Estimator

    plan = churn_lake.plan
    original = plan.model("churn")
    estimator = Estimator.model_validate(
        {"class": f"{__name__}.TemperedBoosting", "params": {"max_iter": 20, "max_depth": 3, "random_state": 7}}
    )
    tempered = dataclasses.replace(original, spec=original.spec.model_copy(update={"estimator": estimator}))
    monkeypatch.setattr(type(plan), "model", lambda self, name: tempered)
    with pytest.raises(ModelError, match=r"model 'churn': the fast predictor \(hist_gradient_boosting\) disagrees"):
        train_model(spark, plan, "churn", churn_lake.work, register=False)
