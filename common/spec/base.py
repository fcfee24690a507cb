"""Shared building blocks of the spec: strict base model, names, durations."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
"""Lower-case identifier: starts with a letter; letters, digits and _ after."""

_UNITS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
}
_DURATION = re.compile(r"^\s*(\d+)\s*(second|minute|hour|day|week)s?\s*$")
DURATION_PATTERN = r"^\s*\d+\s*(second|minute|hour|day|week)s?\s*$"


def duration_seconds(text: str) -> int:
    """``"7 days"`` -> 604800. Raises ValueError for anything else."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a duration; write '<number> <unit>' with unit "
            "second, minute, hour, day or week, e.g. '30 minutes' or '7 days'"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


def _check_duration(text: str) -> str:
    duration_seconds(text)
    return text


Duration = Annotated[str, AfterValidator(_check_duration)]
"""A duration such as ``"1 hour"`` or ``"30 days"``."""


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors; instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
