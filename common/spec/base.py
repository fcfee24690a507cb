"""Shared building blocks of the spec: strict base model, names, durations."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints

from common.errors import shorten

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
# ASCII digits and plain spaces only: Python's \d and \s would accept '٣ days' and '7\xa0days'.
DURATION_PATTERN = r"^ *[0-9]{1,9} *(second|minute|hour|day|week)s? *$"
_DURATION = re.compile(r" *([0-9]{1,9}) *(second|minute|hour|day|week)s? *")  # fullmatch: '$' allows a final \n
MAX_DURATION_S = 100 * 366 * 86400
"""Longest duration accepted (about 100 years): longer ones are typos and overflow time arithmetic."""


def duration_seconds(text: str) -> int:
    """``"7 days"`` -> 604800. Raises ValueError for anything else.

    Strict: ASCII digits, plain spaces, a unit in English (singular or plural), more than
    zero and at most about 100 years.
    """
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(
            f"{shorten(text)} is not a duration; write '<number> <unit>' with ASCII digits, plain spaces and unit "
            "second, minute, hour, day or week, e.g. '30 minutes' or '7 days'"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{text!r} is longer than 100 years; write a shorter duration")
    return seconds


def _check_duration(text: str) -> str:
    duration_seconds(text)
    return text


Duration = Annotated[str, AfterValidator(_check_duration)]
"""A duration such as ``"1 hour"`` or ``"30 days"``."""


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors; instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
