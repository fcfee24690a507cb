"""Row-level transforms: each adds one named column (``one_hot`` adds one per value).

The ``fn`` key picks the transform; its other keys are that transform's
arguments. The compiler maps each ``fn`` to a shared PySpark function in
``common.compile.transforms``, so batch, streaming and REST run the same code.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from common.spec.base import NAME_PATTERN, Name, Strict
from common.spec.sources import ColumnType
from common.spec.sql import check_sql


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

    @field_validator("sql")
    @classmethod
    def _valid_sql(cls, value: str) -> str:
        # checked here, where the error names the field; the compiler's ordering would meet it unnamed
        check_sql(value)
        return value

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


def safe_name(text: str) -> str:
    """``text`` as a safe snake_case name part: lower-cased, every run of characters other than ASCII
    letters and digits replaced by one ``_``, and ``_`` stripped at both ends.
    ``"Month-to-month"`` -> ``"month_to_month"``, ``"Bank transfer (automatic)"`` -> ``"bank_transfer_automatic"``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class OneHotTransform(_Transform):
    """One 0/1 column per listed value (null when the input is null), named ``<name>_<safe value>``
    (:func:`safe_name`: ``contract`` + ``Month-to-month`` -> ``contract_month_to_month``), or as ``names:``
    maps the value. Two values that would give one column are an error naming both."""

    fn: Literal["one_hot"]
    input: Name
    values: list[str] = Field(min_length=1)
    names: dict[str, Name] = Field(
        default_factory=dict,
        description="explicit column name per value (value -> column); the other values get <name>_<safe value>",
    )

    @model_validator(mode="after")
    def _column_names(self) -> OneHotTransform:
        unknown = [value for value in self.names if value not in self.values]
        if unknown:
            raise ValueError(f"names: maps {unknown}, which are not listed under values: {self.values}")
        by_column: dict[str, str] = {}
        for value, column in self.columns():
            if value not in self.names and not safe_name(value):
                raise ValueError(
                    f"one_hot value {value!r} has no letter or digit to name its column after; name it under names:"
                )
            if not re.fullmatch(NAME_PATTERN, column):
                raise ValueError(
                    f"one_hot value {value!r} gives the column name {column!r}, which is not a safe name "
                    "(a letter, then lower-case letters, digits and '_', at most 63); name it under names:"
                )
            if column in by_column:
                raise ValueError(
                    f"one_hot values {by_column[column]!r} and {value!r} both give the column {column!r}; "
                    "list each value once, or name them apart under names: (value: column)"
                )
            by_column[column] = value
        return self

    def columns(self) -> list[tuple[str, str]]:
        """``(value, column name)`` per listed value, in order: what batch, stream and REST all use."""
        return [(value, self.names.get(value) or f"{self.name}_{safe_name(value)}") for value in self.values]

    def outputs(self) -> list[str]:
        return [column for _, column in self.columns()]


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
