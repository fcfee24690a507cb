"""Models: what to predict, from which features, how to train, and when to promote.

A model names its features by reference (``group.feature`` or ``group.*``),
its label as an expression over a source, optional preprocessing steps and an estimator by import path (one scikit-learn
Pipeline), a holdout split (time, random, entity or a given column), the metrics to report, the promotion rule against the
current champion, and a retraining schedule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from common.spec.base import Duration, Name, Strict
from common.spec.monitoring import DriftRule, Evaluation, Retrain
from common.spec.schedules import Cron
from common.spec.sql import check_sql
from common.spec.transforms import BucketizeTransform, ClipTransform, FillTransform, LogTransform, RatioTransform

FEATURE_REF_PATTERN = r"^[a-z][a-z0-9_]{0,62}\.(\*|[a-z][a-z0-9_]{0,62})$"
FeatureRef = Annotated[str, Field(pattern=FEATURE_REF_PATTERN)]
"""``group.feature`` or ``group.*`` (every feature of the group)."""

OnDemandTransform = Annotated[
    Union[FillTransform, ClipTransform, BucketizeTransform, RatioTransform, LogTransform],
    Field(discriminator="fn"),
]
"""Row transforms over looked-up features, run inside the model (pandas), so that
training, batch and stream scoring and REST apply exactly the same code."""

Metric = Literal["roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "precision", "recall"]
METRICS: tuple[str, ...] = Metric.__args__  # type: ignore[attr-defined]


class Label(Strict):
    """The value to predict: an expression over rows of a source, at a time column."""

    source: Name = Field(description="source whose bronze rows are the labels")
    expr: str = Field(description="Spark SQL expression giving 0/1, e.g. churned")
    time: Name = Field(description="column with the time the label refers to; features are taken as of it")

    @field_validator("expr")
    @classmethod
    def _valid_sql(cls, value: str) -> str:
        check_sql(value)
        return value


class Estimator(Strict):
    """A scikit-learn compatible classifier, by import path, with its constructor params."""

    class_: str = Field(
        alias="class",
        pattern=r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$",
        description="import path, e.g. sklearn.ensemble.HistGradientBoostingClassifier",
    )
    params: dict[str, Any] = Field(default_factory=dict)


SplitKind = Literal["time", "random", "entity", "column"]


class Split(Strict):
    """Which labels train the model and which are held out to measure it.

    * ``time`` (default): the latest ``holdout`` share of label times is held out. It cuts between
      distinct times (labels at the cutoff time go to the holdout, never to both sides), so labels
      that all share one time (a snapshot) cannot be time-split: use ``random`` or ``entity``.
    * ``random``: a seeded random ``holdout`` share of the label rows.
    * ``entity``: a ``holdout`` share of the entities, picked by a hash of the entity key and
      ``seed``: all rows of one entity are on the same side, and the same entity stays on the same
      side when labels are added.
    * ``column``: a column of the label source says which rows are the test set, like the
      ``split_col`` of Databricks AutoML: ``test``/``train`` (any case), ``true``/``false`` or
      ``1``/``0`` (true and 1 mean test). For data that arrives with a given train/test split.
    """

    kind: SplitKind = "time"
    holdout: float = Field(default=0.2, gt=0.0, lt=1.0, description="share of rows (time, random) or entities held out")
    seed: int | None = Field(default=None, ge=0, description="random and entity splits: same seed, same split (7)")
    column: Name | None = Field(
        default=None, description="kind column: the label source's column marking the test rows (test/train, 1/0)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Split:
        if self.kind == "column" and self.column is None:
            raise ValueError("a split of kind 'column' needs column: (the label column marking the test rows)")
        if self.kind != "column" and self.column is not None:
            raise ValueError(f"column: is for kind 'column', not {self.kind!r}; drop it or set kind: column")
        if self.kind == "column" and "holdout" in self.model_fields_set:
            raise ValueError("a split of kind 'column' takes its holdout from the column; drop holdout:")
        if self.kind in ("time", "column") and self.seed is not None:
            raise ValueError(f"a {self.kind} split is not random; drop seed: or use kind random or entity")
        return self

    @property
    def random_seed(self) -> int:
        """The seed of a random or entity split (7 when not given)."""
        return 7 if self.seed is None else self.seed


class Step(Strict):
    """One preprocessing step of the model's scikit-learn Pipeline: a transformer by import path."""

    name: Name | None = Field(default=None, description="step name in the Pipeline (default: from the class)")
    class_: str = Field(
        alias="class",
        pattern=r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$",
        description="import path, e.g. sklearn.impute.SimpleImputer or sklearn.preprocessing.StandardScaler",
    )
    params: dict[str, Any] = Field(default_factory=dict)


class Promotion(Strict):
    """Move @champion to a new version when it beats the champion on the same holdout.

    With ``shadow``, a winning version is not promoted at once: it becomes @shadow, the trigger
    streams score it beside the champion (``predictions/shadow``, no actions) for that long, and
    ``loom retrain`` then promotes it by the same rule, judged on the shadow firings' outcomes
    when enough have arrived (``common.models.shadow``).
    """

    metric: Metric = "roc_auc"
    min_improvement: float = Field(default=0.0, ge=0.0, description="in the metric's own units")
    shadow: Duration | None = Field(
        default=None,
        description="score a winning challenger in shadow for this long before it becomes @champion "
        "(only when there is a champion to compare with)",
    )
    shadow_min_labels: int = Field(
        default=50,
        ge=1,
        description="judge the shadow on its firings' outcomes when at least this many matched; "
        "otherwise the holdout verdict stands",
    )


class Model(Strict):
    """One model of the use case; ``loom train --model <name>`` trains it."""

    description: str = ""
    entity: Name
    label: Label
    features: list[FeatureRef] = Field(min_length=1)
    on_demand: list[OnDemandTransform] = Field(default_factory=list)
    preprocessing: list[Step] = Field(
        default_factory=list,
        description="transformers (imputers, scalers, encoders) run before the estimator, in order, as one "
        "scikit-learn Pipeline logged inside the model: training, batch, stream and REST run them alike",
    )
    estimator: Estimator
    split: Split = Field(default_factory=Split)
    metrics: list[Metric] = Field(default_factory=lambda: ["roc_auc", "pr_auc", "log_loss", "brier"])
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0, description="action threshold for precision/recall")
    promotion: Promotion = Field(default_factory=Promotion)
    schedule: Cron | None = Field(
        default=None, description="retraining schedule, a 5-field cron expression in UTC, e.g. '0 3 * * 0'"
    )
    evaluation: Evaluation = Field(default_factory=Evaluation)
    drift: DriftRule = Field(default_factory=DriftRule)
    retrain: Retrain = Field(default_factory=Retrain)
