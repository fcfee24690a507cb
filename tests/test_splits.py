"""Holdout splits (models.<name>.split): time between distinct times, random, entity, a given column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.compile import compile_usecase
from common.errors import DataError, SpecError, SpecErrors
from common.models.split import SPLIT_COLUMN, split_frame, time_split
from common.spec import load_usecase
from common.spec.models import Split
from tests.spec_helpers import mutated_churn


def _frame(rows: int = 200, times: int | None = None, entities: int | None = None) -> pd.DataFrame:
    """Label rows sorted by (time, key) as training sets are; ``times`` distinct times (default: all differ)."""
    stamps = pd.date_range("2026-01-01", periods=times or rows, freq="h")
    frame = pd.DataFrame(
        {
            "t": np.sort(np.resize(stamps.to_numpy(), rows)),
            "k": [f"C{i % (entities or rows):05d}" for i in range(rows)],
            "label": [i % 2 for i in range(rows)],
        }
    )
    return frame.sort_values(["t", "k"], kind="stable").reset_index(drop=True)


def _split(frame: pd.DataFrame, **spec):
    return split_frame(frame, Split.model_validate(spec), time_column="t", entity_key="k", model="m")


def test_a_snapshot_cannot_be_time_split_and_the_error_suggests_random_or_entity():
    frame = _frame(times=1)
    with pytest.raises(DataError) as caught:
        _split(frame, kind="time", holdout=0.2)
    message = str(caught.value)
    assert "all 200 labels share one time (2026-01-01T00:00:00)" in message
    assert "kind: random" in message and "kind: entity" in message and "\n" not in message


def test_the_time_split_cuts_between_distinct_times_even_when_the_earliest_time_holds_most_labels():
    # 180 labels at 00:00, 20 at 01:00: the row at 80 % is at the earliest time, so training would be empty
    frame = pd.DataFrame({"t": pd.to_datetime(["2026-01-01 00:00"] * 180 + ["2026-01-01 01:00"] * 20)})
    frame["k"] = [f"C{i:04d}" for i in range(200)]
    frame["label"] = [i % 2 for i in range(200)]
    split = _split(frame, kind="time", holdout=0.2)
    assert len(split.train) == 180 and len(split.holdout) == 20
    assert split.cutoff == pd.Timestamp("2026-01-01 01:00")
    assert not set(split.train["t"]) & set(split.holdout["t"])  # ties never straddle the cut


def test_the_default_time_split_is_unchanged():
    frame = _frame(times=50)  # 4 labels per time
    split = time_split(frame, "t", 0.2)
    assert split.cutoff == frame["t"].iloc[160]  # the time of the row at 80 %, ties to the holdout
    assert split.train["t"].max() < split.holdout["t"].min() and len(split.holdout) == 40


def test_a_random_split_is_seeded_and_holds_out_its_share():
    frame = _frame(times=1)  # a snapshot: one label time
    first, again = (
        _split(frame, kind="random", holdout=0.25, seed=3),
        _split(frame, kind="random", holdout=0.25, seed=3),
    )
    other = _split(frame, kind="random", holdout=0.25, seed=4)
    assert len(first.holdout) == 50 and len(first.train) == 150
    assert list(first.holdout_rows) == list(again.holdout_rows)
    assert list(first.holdout_rows) != list(other.holdout_rows)
    assert sorted([*first.train_rows, *first.holdout_rows]) == list(range(200))
    assert first.cutoff is None and first.kind == "random"


def test_an_entity_split_keeps_every_row_of_an_entity_on_one_side_and_does_not_move_when_labels_are_added():
    frame = _frame(rows=400, times=4, entities=100)  # 4 labels per entity
    split = _split(frame, kind="entity", holdout=0.3, seed=7)
    assert not set(split.train["k"]) & set(split.holdout["k"])
    assert 15 <= split.holdout["k"].nunique() <= 45  # about 30 of 100 entities
    more = pd.concat([frame, _frame(rows=100, times=1).assign(k=lambda f: "N" + f["k"])], ignore_index=True)
    again = _split(more.sort_values(["t", "k"]).reset_index(drop=True), kind="entity", holdout=0.3, seed=7)
    assert set(split.holdout["k"]) <= set(again.holdout["k"])
    assert set(split.train["k"]) <= set(again.train["k"])
    assert set(split.holdout["k"]) != set(_split(frame, kind="entity", holdout=0.3, seed=8).holdout["k"])


def test_a_column_split_takes_the_test_rows_the_data_marks():
    frame = _frame()
    frame[SPLIT_COLUMN] = ["test" if i % 8 in (0, 1) else "Train" for i in range(200)]
    split = _split(frame, kind="column", column="is_test")
    assert len(split.holdout) == 50 and list(split.holdout_rows) == [i for i in range(200) if i % 8 in (0, 1)]
    frame[SPLIT_COLUMN] = [1 if i % 5 == 0 else 0 for i in range(200)]
    assert len(_split(frame, kind="column", column="is_test").holdout) == 40
    frame[SPLIT_COLUMN] = ["test"] * 100 + ["validate"] + ["train"] * 99
    with pytest.raises(DataError, match=r"split column 'is_test' holds 1 values that are neither test nor train"):
        _split(frame, kind="column", column="is_test")


def test_a_side_without_both_classes_is_refused_naming_the_split():
    frame = _frame(times=1)
    frame["label"] = 0
    with pytest.raises(DataError, match=r"model 'm': the training part of the random split has 160 labels \(0 pos"):
        _split(frame, kind="random", holdout=0.2)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "column"}, "needs column"),
        ({"kind": "random", "column": "x"}, "column: is for kind 'column'"),
        ({"kind": "column", "column": "x", "holdout": 0.3}, "takes its holdout from the column"),
        ({"kind": "time", "seed": 3}, "not random"),
        ({"kind": "stratified"}, "random"),
    ],
)
def test_split_metadata_is_checked(spec, message):
    with pytest.raises(ValueError, match=message):
        Split.model_validate(spec)


def test_a_split_column_the_label_source_lacks_is_a_metadata_error(tmp_path):
    def mutate(documents):
        documents["models.yaml"]["models"]["churn"]["split"] = {"kind": "column", "column": "is_test"}

    with pytest.raises(SpecError) as caught:
        compile_usecase(load_usecase(mutated_churn(tmp_path, mutate)))
    errors = caught.value.errors if isinstance(caught.value, SpecErrors) else [caught.value]
    (err,) = [e for e in errors if e.path == "models.churn.split.column"]
    assert "label source 'outcomes' has no column 'is_test'" in str(err) and "churned" in err.fix
