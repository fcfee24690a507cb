"""The matching rule of the evaluation: which outcome a prediction is judged by.

A prediction for entity ``e`` at time ``p`` is matched with ``e``'s **first**
outcome whose label time is in ``[p, p + label_delay]`` (both ends included;
at equal label times the lower label wins, so the rule is deterministic).
Every prediction gets one status:

* ``matched``: it has such an outcome, and is evaluated with its label;
* ``pending``: none yet, and the window is still open, i.e. ``p + label_delay``
  is after ``labels_through`` (the newest label time seen, by default): the
  outcome may still arrive;
* ``expired``: none, and the window has closed: no outcome came for it.

Only matched predictions enter the metrics; pending and expired ones are
counted. Outcomes before ``p`` never count (they were known when predicting).
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from common.monitoring.sources import LABEL, LABEL_TS, PREDICTION_TS

STATUS = "status"
MATCHED, PENDING, EXPIRED = "matched", "pending", "expired"
_T = "_eval_t"
_KIND = "_eval_kind"  # 0 = prediction, 1 = outcome
_OUTCOME = "_eval_outcome"
_FIRST = "_eval_first"


def labels_through(outcomes: DataFrame) -> datetime | None:
    """The newest label time that has arrived (None when there are no outcomes)."""
    return outcomes.agg(F.max(LABEL_TS)).first()[0]


def window_end_of(column: str, label_delay_s: int) -> Column:
    """``column + label_delay``: when a prediction's outcome window closes."""
    return F.col(column) + F.make_dt_interval(secs=F.lit(label_delay_s))


def match_outcomes(
    predictions: DataFrame, outcomes: DataFrame, key: str, label_delay_s: int, through: datetime | None
) -> DataFrame:
    """``predictions`` plus ``label_ts``, ``label`` (null unless matched) and ``status`` (see module doc).

    One pass, no join and no generated row ids: predictions and outcomes are unioned, sorted per entity
    by time descending (at equal times outcomes first, the lower label last), and each prediction takes
    the last outcome seen so far in that order: the first one at or after its time.
    """
    columns = predictions.columns
    outcome_type = outcomes.select(F.struct(LABEL_TS, LABEL).alias(_OUTCOME)).schema[_OUTCOME].dataType
    rows = predictions.select(
        *columns, F.col(PREDICTION_TS).alias(_T), F.lit(0).alias(_KIND), F.lit(None).cast(outcome_type).alias(_OUTCOME)
    ).unionByName(
        outcomes.select(
            F.col(key), F.col(LABEL_TS).alias(_T), F.lit(1).alias(_KIND), F.struct(LABEL_TS, LABEL).alias(_OUTCOME)
        ),
        allowMissingColumns=True,
    )
    backwards = (
        Window.partitionBy(key)
        .orderBy(F.col(_T).desc(), F.col(_KIND).desc(), F.col(f"{_OUTCOME}.{LABEL}").desc())
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    found = rows.withColumn(_FIRST, F.last(_OUTCOME, ignorenulls=True).over(backwards)).where(F.col(_KIND) == 0)
    window_end = window_end_of(PREDICTION_TS, label_delay_s)
    within = F.col(f"{_FIRST}.{LABEL_TS}") <= window_end
    open_window = F.lit(True) if through is None else (window_end > F.lit(through))
    status = F.when(within, F.lit(MATCHED)).when(open_window, F.lit(PENDING)).otherwise(F.lit(EXPIRED))
    return found.select(
        *columns,
        F.when(within, F.col(f"{_FIRST}.{LABEL_TS}")).alias(LABEL_TS),
        F.when(within, F.col(f"{_FIRST}.{LABEL}")).alias(LABEL),
        status.alias(STATUS),
    )
