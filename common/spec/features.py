"""Feature groups: per-entity features computed from one source.

For a source of kind ``events`` every feature is a windowed aggregation
(``agg`` + ``window``) over tiles of length ``slide``. For a source of kind
``table`` a feature is an expression over the entity's current row.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.spec.base import Duration, Name, Strict, duration_seconds
from common.spec.sql import check_sql
from common.spec.transforms import Transform

Aggregation = Literal["count", "sum", "avg", "min", "max", "stddev", "count_distinct", "last"]
AGGREGATIONS: tuple[str, ...] = Aggregation.__args__  # type: ignore[attr-defined]


class Feature(Strict):
    name: Name
    agg: Aggregation | None = Field(default=None, description="aggregation over the window (events sources)")
    expr: str | None = Field(default=None, description="Spark SQL expression aggregated or returned")
    where: str | None = Field(default=None, description="Spark SQL predicate: only matching rows count")
    window: Duration | None = Field(default=None, description="how far back the aggregation looks, e.g. '7 days'")

    @field_validator("expr", "where")
    @classmethod
    def _valid_sql(cls, value: str | None) -> str | None:
        if value is not None:
            check_sql(value)
        return value

    @model_validator(mode="after")
    def _shape(self) -> Feature:
        if self.agg not in (None, "count") and self.expr is None:
            raise ValueError(f"agg {self.agg!r} needs expr (the value to aggregate)")
        if self.agg is None and self.expr is None:
            raise ValueError("a feature needs agg (with window) or expr")
        if self.agg is not None and self.window is None:
            raise ValueError(f"agg {self.agg!r} needs a window, e.g. window: 7 days")
        if self.agg is None and self.window is not None:
            raise ValueError("window needs agg (count, sum, avg, min, max, stddev, count_distinct or last)")
        return self

    def inputs(self) -> list[str]:
        from common.spec.sql import referenced_columns

        columns: list[str] = []
        for sql in (self.expr, self.where):
            if sql:
                columns += [c for c in referenced_columns(sql) if c not in columns]
        return columns


class Join(Strict):
    """Stream-static enrichment: add columns of a ``table`` source by entity key."""

    source: Name
    columns: list[Name] = Field(min_length=1)


class FeatureGroup(Strict):
    entity: Name
    source: Name
    slide: Duration = Field(default="1 hour", description="tile length; windows are whole tiles")
    ttl: Duration | None = Field(default=None, description="after this, a value counts as missing")
    online: bool = Field(default=True, description="materialize into the online store")
    joins: list[Join] = Field(default_factory=list)
    transforms: list[Transform] = Field(default_factory=list)
    features: list[Feature] = Field(min_length=1)

    @model_validator(mode="after")
    def _windows_fit_slide(self) -> FeatureGroup:
        slide = duration_seconds(self.slide)
        names: set[str] = set()
        for feature in self.features:
            if feature.name in names:
                raise ValueError(f"feature {feature.name!r} is defined twice")
            names.add(feature.name)
            if feature.window is not None and duration_seconds(feature.window) % slide:
                raise ValueError(
                    f"window {feature.window!r} of feature {feature.name!r} is not a whole "
                    f"number of slides ({self.slide!r})"
                )
        return self
