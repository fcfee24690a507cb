"""The registry of row-level transforms: ``fn`` name -> shared PySpark function.

Each function takes the transform's spec and returns ``(column name, Column)``
pairs. The same functions serve batch, streaming and (through Spark Connect-free
pandas evaluation later) on-demand paths, so a transform is written once.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column
from pyspark.sql import functions as F

from common.spec import transforms as t

TransformFn = Callable[[t._Transform], list[tuple[str, Column]]]
_REGISTRY: dict[str, TransformFn] = {}

_SPARK_TYPES = {
    "string": "string",
    "long": "bigint",
    "int": "int",
    "double": "double",
    "boolean": "boolean",
    "timestamp": "timestamp",
    "date": "date",
}


def register(fn_name: str) -> Callable[[TransformFn], TransformFn]:
    """Decorator: make a function the implementation of ``fn: <fn_name>``."""

    def wrap(func: TransformFn) -> TransformFn:
        _REGISTRY[fn_name] = func
        return func

    return wrap


def registered() -> list[str]:
    return sorted(_REGISTRY)


def columns_for(spec: t._Transform) -> list[tuple[str, Column]]:
    """The new columns a transform adds, by its registered function."""
    return _REGISTRY[spec.fn](spec)  # type: ignore[attr-defined]


@register("expr")
def _expr(spec: t.ExprTransform) -> list[tuple[str, Column]]:
    return [(spec.name, F.expr(spec.sql))]


@register("cast")
def _cast(spec: t.CastTransform) -> list[tuple[str, Column]]:
    return [(spec.name, F.col(spec.input).try_cast(_SPARK_TYPES[spec.to]))]


@register("fill")
def _fill(spec: t.FillTransform) -> list[tuple[str, Column]]:
    return [(spec.name, F.coalesce(F.col(spec.input), F.lit(spec.value)))]


@register("clip")
def _clip(spec: t.ClipTransform) -> list[tuple[str, Column]]:
    value = F.col(spec.input).cast("double")
    if spec.min is not None:
        value = F.when(value < F.lit(spec.min), F.lit(spec.min)).otherwise(value)
    if spec.max is not None:
        value = F.when(value > F.lit(spec.max), F.lit(spec.max)).otherwise(value)
    return [(spec.name, value)]


@register("bucketize")
def _bucketize(spec: t.BucketizeTransform) -> list[tuple[str, Column]]:
    value = F.col(spec.input).cast("double")
    index = F.lit(0)
    # bucket i+1 starts at splits[i]: count the splits at or below the value
    for split in spec.splits:
        index = index + F.when(value >= F.lit(split), 1).otherwise(0)
    return [(spec.name, F.when(value.isNull(), None).otherwise(index.cast("double")))]


@register("one_hot")
def _one_hot(spec: t.OneHotTransform) -> list[tuple[str, Column]]:
    value = F.col(spec.input).cast("string")
    return [
        (column, F.when(value.isNull(), None).otherwise((value == F.lit(option)).cast("double")))
        for option, column in spec.columns()
    ]


_DATE_PARTS = {
    "hour": F.hour,
    "minute": F.minute,
    "dayofweek": F.dayofweek,
    "day": F.dayofmonth,
    "month": F.month,
    "year": F.year,
}


@register("date_part")
def _date_part(spec: t.DatePartTransform) -> list[tuple[str, Column]]:
    return [(spec.name, _DATE_PARTS[spec.part](F.col(spec.input)).cast("double"))]


@register("ratio")
def _ratio(spec: t.RatioTransform) -> list[tuple[str, Column]]:
    denominator = F.col(spec.denominator).cast("double")
    numerator = F.col(spec.numerator).cast("double")
    return [(spec.name, F.when(denominator == 0, None).otherwise(numerator / denominator))]


@register("log")
def _log(spec: t.LogTransform) -> list[tuple[str, Column]]:
    value = F.col(spec.input).cast("double")
    return [(spec.name, F.when(value >= 0, F.log1p(value)))]
