"""Holdout splits of a training set (``models.<name>.split``): time, random, entity or a given column.

Every split is deterministic: the same training set and spec give the same rows on each side, so
a retrained challenger and the champion are compared on the same holdout, and ``loom train
--from-run`` rebuilds the run's split. The training set arrives sorted by (label time, entity key).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from common.errors import DataError
from common.spec.models import Split as SplitSpec

LABEL = "label"  # the training set's 0/1 column (common.models.training_set.LABEL)
SPLIT_COLUMN = "_split"  # the label source's split column, carried into the training set (kind: column)
MIN_ROWS_PER_SIDE = 20
_TEST = {"test", "true", "1", "1.0", "yes"}
_TRAIN = {"train", "false", "0", "0.0", "no"}


@dataclass
class Split:
    """The two parts of a training set, and the positions of their rows in the frame that was split."""

    train: pd.DataFrame
    holdout: pd.DataFrame
    cutoff: pd.Timestamp | None  # time split only: every holdout label is at or after it, every training label before
    kind: str = "time"
    train_rows: np.ndarray | None = None
    holdout_rows: np.ndarray | None = None


def split_frame(frame: pd.DataFrame, spec: SplitSpec, *, time_column: str, entity_key: str, model: str) -> Split:
    """Split ``frame`` by ``spec``; DataError (naming the model and the fix) when a side is too small."""
    if spec.kind == "time":
        holdout, cutoff = _time_mask(frame, time_column, spec.holdout, model)
    elif spec.kind == "random":
        holdout, cutoff = _random_mask(len(frame), spec.holdout, spec.random_seed), None
    elif spec.kind == "entity":
        holdout, cutoff = _entity_mask(frame[entity_key], spec.holdout, spec.random_seed), None
    else:
        holdout, cutoff = _column_mask(frame, spec.column or "", model), None
    train_rows, holdout_rows = np.flatnonzero(~holdout), np.flatnonzero(holdout)
    result = Split(
        frame.iloc[train_rows].reset_index(drop=True),
        frame.iloc[holdout_rows].reset_index(drop=True),
        cutoff,
        spec.kind,
        train_rows,
        holdout_rows,
    )
    _check_sides(result, model)
    return result


def time_split(frame: pd.DataFrame, time_column: str, holdout: float) -> Split:
    """The default split: the latest ``holdout`` share of label times (see :func:`split_frame`)."""
    return split_frame(frame, SplitSpec(holdout=holdout), time_column=time_column, entity_key="", model="model")


def _time_mask(frame: pd.DataFrame, time_column: str, share: float, model: str) -> tuple[np.ndarray, pd.Timestamp]:
    """Rows at or after the cutoff: the time of the row at position ``len * (1 - share)`` by time.

    The cut is between distinct times, so equal times never straddle it. When that time is the
    earliest one, the next distinct time is the cutoff (the training side would be empty).
    """
    times = pd.to_datetime(frame[time_column]).sort_values(kind="stable").reset_index(drop=True)
    distinct = times.drop_duplicates().reset_index(drop=True)
    if len(distinct) < 2:
        shown = distinct.iloc[0].isoformat() if len(distinct) else "none"
        raise DataError(
            f"model {model!r}: all {len(frame)} labels share one time ({shown}), so a time split has nothing to "
            "train on. Fix: use split: {kind: random} or split: {kind: entity} (or a given test column: "
            "split: {kind: column, column: <name>})"
        )
    cutoff = times.iloc[min(len(times) - 1, int(len(times) * (1 - share)))]
    if cutoff == distinct.iloc[0]:
        cutoff = distinct.iloc[1]
    return (pd.to_datetime(frame[time_column]) >= cutoff).to_numpy(), cutoff


def _random_mask(rows: int, share: float, seed: int) -> np.ndarray:
    """A seeded random ``share`` of the rows (rounded to the nearest row count)."""
    chosen = np.random.default_rng(seed).permutation(rows)[: round(rows * share)]
    mask = np.zeros(rows, dtype=bool)
    mask[chosen] = True
    return mask


def entity_fraction(key: object, seed: int) -> float:
    """Where an entity falls in [0, 1): a hash of its key and the seed (stable across runs and machines)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _entity_mask(keys: pd.Series, share: float, seed: int) -> np.ndarray:
    """Rows of the entities whose hash falls below ``share``: every row of an entity on one side."""
    fractions = {key: entity_fraction(key, seed) for key in keys.unique()}
    return keys.map(fractions).to_numpy(dtype="float64") < share


def _column_mask(frame: pd.DataFrame, column: str, model: str) -> np.ndarray:
    """True for the rows the label source marks as test rows."""
    text = frame[SPLIT_COLUMN].astype("string").str.strip().str.lower()
    unknown = text[~text.isin(_TEST | _TRAIN)]
    if len(unknown):
        shown = sorted({str(v) for v in unknown.head(5)})
        raise DataError(
            f"model {model!r}: split column {column!r} holds {len(unknown)} values that are neither test nor train "
            f"(e.g. {shown}). Fix: write test/train, true/false or 1/0 in every label row"
        )
    return text.isin(_TEST).to_numpy(dtype=bool)


def _check_sides(split: Split, model: str) -> None:
    for name, part in (("training", split.train), ("holdout", split.holdout)):
        if len(part) < MIN_ROWS_PER_SIDE or part[LABEL].nunique() < 2:
            positives = int(part[LABEL].sum()) if len(part) else 0
            fix = (
                "mark more rows as test/train in the split column" if split.kind == "column" else "change split.holdout"
            )
            raise DataError(
                f"model {model!r}: the {name} part of the {split.kind} split has {len(part)} labels "
                f"({positives} positive); it needs at least {MIN_ROWS_PER_SIDE} with both classes. "
                f"Fix: ingest more labels, or {fix}"
            )
