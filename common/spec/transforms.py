"""Row-level transforms: each adds one named column (``one_hot`` adds one per value).

The ``fn`` key picks the transform; its other keys are that transform's
arguments. The compiler maps each ``fn`` to a shared PySpark function in
``common.compile.transforms``, so batch, streaming and REST run the same code.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from common.spec.base import Name, Strict
from common.spec.sources import ColumnType


class _Transform(Strict):
    name: Name = Field(description="name of the column this transform adds")

    def inputs(self) -> list[str]:
        """Columns this transform reads (used for ordering, cycles and PII lineage)."""
        return [self.input]  # type: ignore[attr-defined]

    def outputs(self) -> list[str]:
        return [self.name]


class ExprTransform(_Transform):
    """Any Spark SQL expression over the row, e.g. ``hour(ts) >= 18``."""

    fn: Literal["expr"]
    sql: str = Field(min_length=1)

    def inputs(self) -> list[str]:
        from common.spec.sql import referenced_columns

        return referenced_columns(self.sql)


class CastTransform(_Transform):
    fn: Literal["cast"]
    input: Name
    to: ColumnType


class FillTransform(_Transform):
    """Replace null with ``value``."""

    fn: Literal["fill"]
    input: Name
    value: str | int | float | bool


class ClipTransform(_Transform):
    fn: Literal["clip"]
    input: Name
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ClipTransform:
        if self.min is None and self.max is None:
            raise ValueError("clip needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"clip min {self.min} is greater than max {self.max}")
        return self


class BucketizeTransform(_Transform):
    """Index of the bucket ``splits[i] <= x < splits[i+1]``; below the first split is 0."""

    fn: Literal["bucketize"]
    input: Name
    splits: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _sorted(self) -> BucketizeTransform:
        if list(self.splits) != sorted(set(self.splits)):
            raise ValueError(f"bucketize splits must be strictly increasing, got {self.splits}")
        return self


class OneHotTransform(_Transform):
    """One 0/1 column ``<name>_<value>`` per listed value."""

    fn: Literal["one_hot"]
    input: Name
    values: list[str] = Field(min_length=1)

    def outputs(self) -> list[str]:
        return [f"{self.name}_{value}" for value in self.values]


class DatePartTransform(_Transform):
    fn: Literal["date_part"]
    input: Name
    part: Literal["hour", "dayofweek", "day", "month", "year", "minute"]


class RatioTransform(_Transform):
    """``numerator / denominator``; null when the denominator is 0 or null."""

    fn: Literal["ratio"]
    numerator: Name
    denominator: Name

    def inputs(self) -> list[str]:
        return [self.numerator, self.denominator]


class LogTransform(_Transform):
    """``ln(1 + x)`` for x >= 0, null otherwise."""

    fn: Literal["log"]
    input: Name


Transform = Annotated[
    Union[
        ExprTransform,
        CastTransform,
        FillTransform,
        ClipTransform,
        BucketizeTransform,
        OneHotTransform,
        DatePartTransform,
        RatioTransform,
        LogTransform,
    ],
    Field(discriminator="fn"),
]
