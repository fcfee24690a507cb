"""Preprocessing (models.<name>.preprocessing): a scikit-learn Pipeline logged inside the model, its fast
predictor (or the Pipeline itself) on every path, and estimator refusals as one-line user errors."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import EstimatorError, SpecError
from common.models import fast_predict
from common.models.estimators import build_model, run_estimator, step_names
from common.models.fast_predict import PipelinePredictor, build_fast_predictor, check_fast_predictor
from common.spec.models import Model, Step

IMPUTE_SCALE = [
    {"class": "sklearn.impute.SimpleImputer", "params": {"strategy": "median"}},
    {"class": "sklearn.preprocessing.StandardScaler"},
]


def _model(preprocessing, estimator=None) -> Model:
    return Model.model_validate(
        {
            "entity": "customer",
            "label": {"source": "customers", "expr": "churned", "time": "as_of"},
            "features": ["profile.*"],
            "preprocessing": preprocessing,
            "estimator": estimator or {"class": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.5}},
        }
    )


def _data(rows: int = 400, missing: float = 0.2, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)) * [1.0, 10.0, 100.0, 0.1] + [0.0, 5.0, 50.0, 1.0]
    y = (x[:, 0] + x[:, 1] / 10 + rng.normal(size=rows) > 0.5).astype(int)
    x[rng.random(x.shape) < missing] = np.nan
    return x, y


def test_preprocessing_steps_and_the_estimator_make_one_pipeline():
    pipeline = build_model(_model(IMPUTE_SCALE), "m")
    assert [name for name, _ in pipeline.steps] == ["simple_imputer", "standard_scaler", "estimator"]
    assert pipeline.steps[0][1].strategy == "median" and pipeline.steps[2][1].C == 0.5
    assert type(build_model(_model([]), "m")).__name__ == "LogisticRegression"  # no steps: the estimator alone
    assert step_names(
        [Step.model_validate(s) for s in [IMPUTE_SCALE[1], IMPUTE_SCALE[1], {"class": "a.B", "name": "x"}]]
    ) == [
        "standard_scaler",
        "standard_scaler_2",
        "x",
    ]


def test_a_step_that_is_not_a_transformer_is_a_metadata_error_naming_its_path():
    with pytest.raises(SpecError) as caught:
        build_model(_model([{"class": "sklearn.linear_model.LogisticRegression"}]), "m", "models.yaml")
    assert caught.value.path == "models.m.preprocessing[0].class" and "fit/transform" in str(caught.value)
    with pytest.raises(SpecError) as caught:
        build_model(_model([{"class": "sklearn.impute.SimpleImputer", "params": {"nope": 1}}]), "m")
    assert caught.value.path == "models.m.preprocessing[0].params"


@pytest.mark.parametrize(
    "scaler",
    [
        "sklearn.preprocessing.StandardScaler",
        "sklearn.preprocessing.MinMaxScaler",
        "sklearn.preprocessing.MaxAbsScaler",
        "sklearn.preprocessing.RobustScaler",
    ],
)
def test_the_pipeline_fast_predictor_scores_like_the_pipeline_with_missing_values(scaler):
    x, y = _data()
    pipeline = build_model(_model([IMPUTE_SCALE[0], {"class": scaler}]), "m")
    pipeline.fit(x[:300], y[:300])
    fast = build_fast_predictor(pipeline)
    assert isinstance(fast, PipelinePredictor) and fast.final.kind == "linear"
    assert check_fast_predictor(fast, pipeline, x[300:], model="m") <= fast_predict.TOLERANCE
    again = fast_predict.loads(fast_predict.dumps(fast))  # the artifact logged with the model
    np.testing.assert_array_equal(again.predict(x[300:]), fast.predict(x[300:]))
    one = x[300:301]
    assert abs(again.predict(one)[0] - pipeline.predict_proba(one)[0, 1]) <= fast_predict.TOLERANCE


def test_a_pipeline_with_a_tree_estimator_gets_the_tree_backend_after_its_steps():
    x, y = _data()
    estimator = {"class": "sklearn.ensemble.HistGradientBoostingClassifier", "params": {"max_iter": 20}}
    pipeline = build_model(_model(IMPUTE_SCALE, estimator), "m").fit(x[:300], y[:300])
    fast = build_fast_predictor(pipeline)
    assert fast.final.kind == "hist_gradient_boosting"
    check_fast_predictor(fast, pipeline, x[300:], model="m")


def test_a_step_without_a_fast_form_leaves_scoring_to_the_pipeline(tmp_path):
    """An encoder step: no fast predictor, so the pyfunc (batch, stream and REST) scores with the Pipeline."""
    from common.compile.feature_spec import FeatureSpec, GroupRef
    from common.models.pyfunc import LoomModel

    x, y = _data(missing=0.0)
    x[:, 3] = np.round(x[:, 3] * 10) % 3  # a small categorical code
    steps = [IMPUTE_SCALE[0], {"class": "sklearn.preprocessing.OneHotEncoder", "params": {"handle_unknown": "ignore"}}]
    pipeline = build_model(_model(steps), "m").fit(x[:300], y[:300])
    assert build_fast_predictor(pipeline) is None
    model = LoomModel()
    model.spec = FeatureSpec(
        "u", 1, "m", "customer", "customer_id", (GroupRef("g", ("a", "b", "c", "d"), None, ("a", "b", "c", "d")),)
    )
    model.estimator, model.fast = pipeline, None
    np.testing.assert_array_equal(model.predict_matrix(x[300:]), pipeline.predict_proba(x[300:])[:, 1])


def test_missing_values_without_an_imputer_are_a_one_line_user_error_naming_the_model_the_step_and_the_fix():
    x, y = _data()
    pipeline = build_model(_model([IMPUTE_SCALE[1]]), "telco")  # a scaler passes NaN on; the estimator refuses it
    with pytest.raises(EstimatorError) as caught:
        run_estimator(pipeline, "fit", pipeline.fit, x, y, model="telco")
    message = str(caught.value)
    assert message.startswith(
        "model 'telco': step 'estimator' (LogisticRegression) failed to fit: Input X contains NaN"
    )
    assert "use an estimator that accepts missing values" in message and "SimpleImputer" in message
    assert "\n" not in message and caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_failing_preprocessing_step_is_named():
    x, y = _data()
    pipeline = build_model(_model([{"class": "sklearn.impute.SimpleImputer", "params": {"strategy": "bogus"}}]), "m")
    with pytest.raises(EstimatorError, match=r"model 'm': step 'simple_imputer' \(SimpleImputer\) failed to fit"):
        run_estimator(pipeline, "fit", pipeline.fit, x, y, model="m")


def test_scoring_missing_values_with_a_model_that_cannot_take_them_is_a_user_error():
    """Batch, stream and REST call the pyfunc's predict_matrix: a raw sklearn traceback there becomes one line."""
    from common.compile.feature_spec import FeatureSpec, GroupRef
    from common.models.pyfunc import LoomModel

    x, y = _data(missing=0.0)
    estimator = build_model(_model([]), "m").fit(x, y)
    model = LoomModel()
    model.spec = FeatureSpec(
        "u", 1, "m", "customer", "customer_id", (GroupRef("g", ("a", "b", "c", "d"), None, ("a", "b", "c", "d")),)
    )
    model.estimator, model.fast = estimator, None
    x[0, 0] = np.nan
    with pytest.raises(EstimatorError, match=r"model 'm': step 'estimator' \(LogisticRegression\) failed to predict"):
        model.predict_matrix(x)


def test_a_feature_with_no_value_in_training_is_named_when_the_fit_fails():
    """HistGradientBoosting cannot bin a column of NaN; the error names the empty feature, not numpy's window shape."""
    from common.models.estimators import fit_estimator

    x, y = _data(missing=0.0)
    x[:, 2] = np.nan
    hgb = {"class": "sklearn.ensemble.HistGradientBoostingClassifier", "params": {"max_iter": 5}}
    estimator = build_model(_model([], hgb), "m")
    with pytest.raises(EstimatorError) as caught:
        fit_estimator(estimator, x, y, ["a", "b", "c", "d"], model="m")
    message = str(caught.value)
    assert message.startswith("model 'm': feature(s) 'c' have no value in any of the 400 training rows")
    assert "models.m.features" in message and "\n" not in message

    # with an imputer the same data fits, and a failure with no empty feature keeps the estimator's own words
    imputed = build_model(_model([IMPUTE_SCALE[0]]), "m")
    fit_estimator(imputed, x, y, ["a", "b", "c", "d"], model="m")
    x[:, 2] = 1.0
    x[0, 0] = np.nan
    with pytest.raises(EstimatorError, match="failed to fit: Input X contains NaN"):
        fit_estimator(build_model(_model([]), "m"), x, y, ["a", "b", "c", "d"], model="m")
