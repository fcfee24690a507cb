"""One prediction explained by its features: what each feature adds to the score.

Model-agnostic occlusion: the entity's score minus its score with one feature
replaced by a baseline (that feature's median over every entity scored at the
same time). The model is the registered pyfunc, so its on-demand transforms see
the replaced value, exactly as in training, batch, stream and REST.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from common.compile.plan import Plan
from common.errors import DataError
from common.settings import Paths

MAX_BACKGROUND = 2000


@dataclass
class Explanation:
    """The score of one entity at one time and each feature's contribution to it."""

    entity: str
    model: str
    at: datetime
    score: float
    baseline_score: float  # every feature at its baseline
    rows: pd.DataFrame  # feature, value, baseline, contribution; largest |contribution| first

    def render(self, top: int = 10) -> str:
        lines = [
            f"{self.entity} scored {self.score:.4f} by {self.model} as of {self.at:%Y-%m-%d %H:%M} UTC "
            f"(all features at their median: {self.baseline_score:.4f})"
        ]
        for row in self.rows.head(top).itertuples():
            lines.append(
                f"  {row.feature:<26} {row.value:>12.4g} (median {row.baseline:>10.4g}) {row.contribution:+.4f}"
            )
        return "\n".join(lines)


def contributions(model: Any, features: pd.DataFrame, background: pd.DataFrame) -> tuple[float, float, pd.DataFrame]:
    """Occlusion contributions of one row of ``features`` against ``background``'s medians.

    ``model`` is a :class:`~common.models.pyfunc.LoomModel`; returns (score, baseline score, rows).
    """
    names = list(model.feature_spec.lookup_features)
    row = features[names].iloc[[0]].astype("float64").reset_index(drop=True)
    baseline = background[names].apply(pd.to_numeric, errors="coerce").median()
    variants = pd.concat([row] * (len(names) + 2), ignore_index=True)
    for index, name in enumerate(names, start=1):
        variants.loc[index, name] = baseline[name]
    variants.loc[len(names) + 1, names] = baseline[names].to_numpy()
    scores = np.asarray(model.predict_features(variants), dtype="float64")
    rows = pd.DataFrame(
        {
            "feature": names,
            "value": row.iloc[0].to_numpy(),
            "baseline": baseline[names].to_numpy(),
            "contribution": scores[0] - scores[1 : len(names) + 1],
        }
    )
    rows = rows.reindex(rows["contribution"].abs().sort_values(ascending=False, kind="stable").index)
    return float(scores[0]), float(scores[-1]), rows.reset_index(drop=True)


def explain_prediction(
    spark: SparkSession, plan: Plan, model: str, entity: str, at: datetime, work: Paths
) -> Explanation:
    """Explain ``entity``'s score by ``model`` (``churn@champion``, ``churn/3``) as of ``at``: the point-in-time
    features batch scoring uses, scored by the registered pyfunc, one feature at a time set to its median."""
    import mlflow
    from pyspark.sql import functions as F

    from common.models.scoring import PREDICTION_TS, known_entities, model_feature_spec, resolve_model
    from common.models.training_set import create_training_set
    from common.runtime.tracking import configure

    ref = resolve_model(model, work)
    spec = model_feature_spec(ref, work)
    refs = [f"{g.name}.{f}" for g in spec.groups for f in g.selected]
    rows = known_entities(spark, plan, spec, work, [at])
    features = create_training_set(rows, refs, plan=plan, work=work, time_column=PREDICTION_TS).frame
    background = features.limit(MAX_BACKGROUND).toPandas()
    one = features.where(F.col(spec.entity_key) == F.lit(entity)).toPandas()
    if one.empty:
        raise DataError(
            f"{spec.entity_key} {entity!r} has no features as of {at:%Y-%m-%d %H:%M} UTC. "
            "Fix: pick an entity that batch scoring scored at that time"
        )
    configure(work)
    loaded = mlflow.pyfunc.load_model(ref.uri).unwrap_python_model()
    score, baseline_score, table = contributions(loaded, one, background)
    return Explanation(entity, str(ref), at, score, baseline_score, table)
