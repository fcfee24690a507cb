"""Schedules: which ``loom`` job runs when, with which arguments, as a 5-field cron expression.

Only the shape is checked here: the cron expression (portable subset, it must
fire) and the argument names and values. Whether the job exists and accepts
the arguments is checked by ``loom schedule`` (jobs/schedule.py), which builds
each job's own argument parser; ``common`` never imports ``jobs``.

A model's ``schedule:`` is an implied retrain schedule (``train --model <name>``)
unless a schedules entry already trains that model (``train``, or ``retrain``:
the policy, which retrains when the model's schedule ticked). Times are UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, Field, ValidationError, field_validator

from common.errors import SpecError, shorten
from common.spec.base import Name, Strict

if TYPE_CHECKING:  # usecase.py imports this module for its `schedules` field
    from common.spec.usecase import UseCase

CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_NUMERIC = re.compile(r"^[0-9*,/-]+$")
# month and day-of-week may also use three-letter names (jan, mon-fri)
_NAMED = re.compile(r"^([0-9*,/-]|[a-z]{3})+$")
CRON_HELP = (
    "write 5 fields 'minute hour day-of-month month day-of-week' in UTC with numbers, *, ranges a-b, "
    "lists a,b and steps /n, e.g. '30 1 * * *' (daily at 01:30) or '0 3 * * 0' (Sundays at 03:00)"
)


_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_NAMES = {
    **{
        m: i + 1
        for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])
    },
    **{d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
_RANGE = re.compile(r"^([0-9]+|[a-z]{3})-([0-9]+|[a-z]{3})$")


def check_cron(text: str) -> str:
    """A portable 5-field cron expression that fires at least once; ValueError otherwise.

    Portable means what crontab, croniter and a Quartz conversion (Databricks) all
    read the same way: no ``@daily`` (the error gives the 5-field equivalent), no seconds
    field (a 6th field would tick every second in croniter), no ``L``, ``W``, ``#``, ``?`` or
    ``H``; fields separated by plain spaces; ranges from low to high (``1-0`` is refused rather
    than read as a wrap-around); and a date that exists (``30 2`` never fires).
    """
    from croniter import CroniterError, croniter

    shown = shorten(text, 80)
    if not isinstance(text, str) or not text.isascii() or not text.replace(" ", "").isprintable():
        raise ValueError(f"{shown} is not a cron expression: use ASCII and plain spaces only; {CRON_HELP}")
    if text.strip() in _NICKNAMES:
        nick = text.strip()
        raise ValueError(f"{nick!r} is a nickname Loom does not accept; write {_NICKNAMES[nick]!r} (same meaning, UTC)")
    fields = text.split()
    if len(fields) == 6:
        raise ValueError(
            f"{shown} has 6 fields: Loom's cron has no seconds field (it would tick every second); {CRON_HELP}"
        )
    if len(fields) != 5:
        raise ValueError(f"{shown} has {len(fields)} fields, not 5; {CRON_HELP}")
    for index, (name, field) in enumerate(zip(CRON_FIELDS, fields, strict=True)):
        pattern = _NAMED if index >= 3 else _NUMERIC
        if not pattern.match(field.lower()):
            raise ValueError(f"{shown}: the {name} field {shorten(field, 40)} is not portable cron; {CRON_HELP}")
        for part in field.lower().split(","):
            match = _RANGE.match(part.split("/")[0])
            if match:
                low, high = (int(_NAMES.get(v, v)) for v in match.groups())
                if low > high:
                    raise ValueError(
                        f"{shown}: the {name} range {match.group(0)!r} runs backwards; write it from low to high "
                        f"(for a wrap-around, list two ranges, e.g. '22-23,0-2'); {CRON_HELP}"
                    )
    if not croniter.is_valid(text):
        raise ValueError(f"{shown} is not a cron expression (a value out of range?); {CRON_HELP}")
    try:
        croniter(text, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (CroniterError, ValueError, KeyError):  # CroniterBadDateError: no matching date, e.g. 30 February
        raise ValueError(f"{shown} never fires (no such date, e.g. 30 February); {CRON_HELP}") from None
    return text


Cron = Annotated[str, AfterValidator(check_cron)]
"""A 5-field cron expression in UTC, e.g. ``"0 3 * * 0"``."""

ArgValue = bool | int | float | str | list[int | float | str]
"""A job argument: a value, ``true`` for a switch (``false`` leaves it out), or a list for a repeatable flag."""

_ARG_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
RESERVED_ARGS = {"usecase": "the scheduler passes --usecase itself"}


class Schedule(Strict):
    """Run ``loom <job> --usecase <use case> <args>`` at every tick of ``cron`` (UTC)."""

    description: str = ""
    job: Name = Field(description="a loom job: ingest, backfill, stream, train, score, consistency, ...")
    args: dict[str, ArgValue] = Field(
        default_factory=dict,
        description="the job's flags without '--', e.g. {model: churn} or {available-now: true}",
    )
    cron: Cron = Field(description="5-field cron expression in UTC, e.g. '0 3 * * 0'")

    @field_validator("args")
    @classmethod
    def _arg_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if name.startswith("-"):
                raise ValueError(f"argument {name!r}: write the flag without leading dashes, e.g. {name.lstrip('-')}:")
            if not _ARG_NAME.match(name):
                raise ValueError(f"argument {name!r} is not a flag name; write it as on the command line without '--'")
            if name in RESERVED_ARGS:
                raise ValueError(f"argument {name!r} is not allowed here: {RESERVED_ARGS[name]}; remove it")
        return value

    def trains(self, model: str) -> bool:
        """True when this schedule runs ``train`` or ``retrain`` (the policy, which honours the
        model's own ``schedule``) for ``model``."""
        return self.job in ("train", "retrain") and str(self.args.get("model")) == model

    def latest_tick(self, at: datetime) -> datetime:
        """The latest time at or before ``at`` (UTC) at which the cron expression fires."""
        from croniter import croniter

        minute = at.astimezone(UTC).replace(second=0, microsecond=0)
        # ticks fall on whole minutes, so none lies between `minute` and `at`
        if croniter.match(self.cron, minute):
            return minute
        return croniter(self.cron, minute).get_prev(datetime)

    def next_tick(self, after: datetime) -> datetime:
        """The first time strictly after ``after`` (UTC) at which the cron expression fires."""
        from croniter import croniter

        return croniter(self.cron, after.astimezone(UTC)).get_next(datetime)


class ScheduleEntry(Strict):
    """A schedule with where it was declared, for error messages."""

    name: str
    schedule: Schedule
    file: str | None = None
    path: str = Field(description="YAML path of the declaration, e.g. schedules.nightly_backfill")
    implied: bool = False


def implied_name(model: str) -> str:
    """Name of the retrain schedule implied by a model's ``schedule:``."""
    return f"retrain_{model}"


def usecase_schedules(spec: UseCase) -> dict[str, ScheduleEntry]:
    """The declared schedules plus one retrain per model whose ``schedule:`` no entry already trains.

    Raises :class:`SpecError` when a model's schedule is not a portable cron
    expression or its implied name is taken by another schedule.
    """
    # getattr: UseCase gains its `schedules` field separately; until then only models imply schedules
    declared: dict[str, Schedule] = dict(getattr(spec, "schedules", None) or {})
    entries = {
        name: ScheduleEntry(name=name, schedule=s, file=spec.file_of("schedules", name), path=f"schedules.{name}")
        for name, s in declared.items()
    }
    for model_name, model in spec.models.items():
        if model.schedule is None or any(s.trains(model_name) for s in declared.values()):
            continue
        name = implied_name(model_name)
        where = {"file": spec.file_of("models", model_name), "path": f"models.{model_name}.schedule"}
        if name in entries:
            raise SpecError(
                f"the retrain schedule implied by this model would be named {name!r}, which schedules already uses",
                **where,
                value=model.schedule,
                fix=f"rename schedules.{name}, or give it job: train and args: {{model: {model_name}}}",
            )
        try:
            schedule = Schedule(
                job="train",
                args={"model": model_name},
                cron=model.schedule,
                description=f"retrain {model_name}",
            )
        except ValidationError as err:
            message = err.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
            raise SpecError(message, **where) from None  # the message says how to write it
        entries[name] = ScheduleEntry(name=name, schedule=schedule, implied=True, **where)
    return entries
