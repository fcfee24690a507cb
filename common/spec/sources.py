"""Sources: landing files that ingestion turns into bronze Delta tables."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import Field, model_validator

from common.spec.base import Duration, Name, Strict
from common.spec.privacy import Policy

ColumnType = Literal["string", "long", "int", "double", "boolean", "timestamp", "date"]


class Column(Strict):
    """One column of a source: its type, whether it must be present, its domain and PII policy."""

    type: ColumnType
    required: bool = Field(default=False, description="a record without a value goes to quarantine")
    allowed: list[str | int | float] | None = Field(
        default=None, description="closed set of valid values; others go to quarantine"
    )
    pii: bool | Policy = Field(
        default=False,
        description="false: not PII. true: PII without a policy (refused by the compiler). "
        "Otherwise the policy that protects it at ingestion.",
    )

    @property
    def is_pii(self) -> bool:
        return self.pii is not False

    @property
    def policy(self) -> Policy | None:
        return None if isinstance(self.pii, bool) else self.pii


class EventTimeRange(Strict):
    """When an event may plausibly have happened; ingestion quarantines an ``event_time`` outside it.

    Upstream systems send placeholder dates (0001-01-01, 1900-01-01, 9999-12-31): they would
    distort every window, and some tools cannot even read them back from bronze.
    """

    not_before: date = Field(
        default=date(2000, 1, 1), description="earliest plausible event date (UTC); earlier events are quarantined"
    )
    max_future: Duration = Field(
        default="1 day",
        description="how far after the ingestion's clock an event may be stamped (clock skew); later ones are quarantined",
    )


class Source(Strict):
    """A landing folder of files, its schema, its entity and its time column.

    ``kind: events`` are immutable facts with an event time; ``kind: table`` is a
    snapshot of one row per entity (profiles, accounts), versioned by ``event_time``
    when it has one.
    """

    kind: Literal["events", "table"] = "events"
    format: Literal["json", "csv", "parquet"]
    path: str = Field(description="folder of landing files; '{landing}' expands to $LOOM_HOME/landing/<usecase>")
    entity: Name = Field(description="the entity whose key column this source carries")
    id: Name | None = Field(default=None, description="unique record id; duplicates are ingested once")
    event_time: Name | None = Field(default=None, description="timestamp column that orders the records")
    watermark: Duration | None = Field(default=None, description="how late an event may arrive in a stream")
    event_time_range: EventTimeRange = Field(
        default_factory=EventTimeRange,
        description="plausible event times (default: from 2000-01-01 to 1 day after now); others are quarantined",
    )
    columns: dict[Name, Column] = Field(min_length=1)

    @model_validator(mode="after")
    def _columns_exist(self) -> Source:
        for field_name in ("id", "event_time"):
            column = getattr(self, field_name)
            if column is not None and column not in self.columns:
                raise ValueError(f"{field_name} {column!r} is not one of the columns {sorted(self.columns)}")
        if self.event_time is not None and self.columns[self.event_time].type != "timestamp":
            raise ValueError(f"event_time column {self.event_time!r} must have type timestamp")
        if self.kind == "events" and self.event_time is None:
            raise ValueError("a source of kind 'events' needs event_time (its timestamp column)")
        return self
