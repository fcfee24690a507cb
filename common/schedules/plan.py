"""Checked schedules: each schedule's job and ``args`` against that job's own argparse parser.

The parsers come from the caller (``loom schedule`` builds them from the job
modules): ``common`` never imports ``jobs``. common/spec checks only the shape
and the cron expression; here the job must exist, take ``--usecase``, accept
the arguments and end by itself.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from common.errors import SpecError, SpecErrors
from common.spec import UseCase
from common.spec.schedules import ScheduleEntry, usecase_schedules


class ArgumentRejected(Exception):
    """argparse's complaint, raised instead of printing usage and exiting."""


def raising(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser``, changed to raise :class:`ArgumentRejected` instead of printing usage and exiting."""

    def _raise(message: str) -> NoReturn:
        raise ArgumentRejected(message)

    parser.error = _raise  # type: ignore[method-assign]
    return parser


@dataclass(frozen=True)
class SchedulableJob:
    """A ``loom`` job a schedule may name: its file stem in jobs/ and its parser (made by :func:`raising`)."""

    module: str
    parser: argparse.ArgumentParser


@dataclass(frozen=True)
class Planned:
    """A checked schedule: the job's file in jobs/ and its arguments after ``--usecase``.

    ``takes_profile``: the job has a ``--profile`` flag (Spark jobs), so that a
    Databricks task can pass ``--profile databricks``.
    """

    entry: ScheduleEntry
    module: str
    argv: tuple[str, ...]
    takes_profile: bool

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def job(self) -> str:
        return self.entry.schedule.job

    @property
    def cron(self) -> str:
        return self.entry.schedule.cron

    @property
    def source(self) -> str:
        """Where the schedule is declared: its YAML path, or the model's ``schedule`` that implies it."""
        return f"implied by {self.entry.path}" if self.entry.implied else self.entry.path


def yaml_path(entry: ScheduleEntry, key: str) -> str:
    """YAML path of one of a schedule's keys; an implied schedule's is the model's ``schedule``."""
    return entry.path if entry.implied else f"{entry.path}.{key}"


def _error(entry: ScheduleEntry, key: str, message: str, value: Any = None, fix: str | None = None) -> SpecError:
    return SpecError(message, file=entry.file, path=yaml_path(entry, key), value=value, fix=fix)


def _never_ends(job: str, args: argparse.Namespace) -> tuple[str, str] | None:
    """(why, fix) when a job with these arguments runs until stopped: a scheduled run must end."""
    if job == "stream" and not args.available_now:
        return "stream runs until stopped", "add available-now: true to process what has landed, then stop"
    if job == "ingest" and args.mode == "stream":
        return "ingest --mode stream runs until stopped", "use mode: batch"
    return None


def _flag_argv(entry: ScheduleEntry, parser: argparse.ArgumentParser) -> list[str]:
    """The schedule's ``args`` as command-line flags, each checked against the job's parser."""
    job = entry.schedule.job
    options = parser._option_string_actions
    known = sorted(o[2:] for o in options if o.startswith("--") and o not in ("--help", "--usecase"))
    argv: list[str] = []
    for key, value in entry.schedule.args.items():
        option = f"--{key}"
        action = options.get(option)
        if action is None:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _error(entry, f"args.{key}", f"job {job!r} has no flag --{key}", fix=f"{hint}use one of {known}")
        if action.nargs == 0:  # a switch: store_true and friends
            if not isinstance(value, bool):
                raise _error(entry, f"args.{key}", f"--{key} is a switch", value, "write true (or leave it out)")
            if value:
                argv.append(option)
        elif isinstance(value, list):
            if not isinstance(action, argparse._AppendAction):
                raise _error(entry, f"args.{key}", f"--{key} takes one value, not a list", value, "write one value")
            for item in value:
                argv += [option, str(item)]
        elif isinstance(value, bool):
            raise _error(
                entry, f"args.{key}", f"--{key} takes a value, not true/false", value, f"see loom {job} --help"
            )
        else:
            argv += [option, str(value)]
    return argv


def check_entry(
    spec: UseCase, entry: ScheduleEntry, jobs: Mapping[str, SchedulableJob], loom_jobs: Collection[str]
) -> Planned:
    """One schedule -> :class:`Planned`, or a :class:`SpecError` naming the YAML path and the fix.

    ``jobs``: the jobs a schedule may name; ``loom_jobs``: every ``loom`` job, so
    that one outside ``jobs`` is told apart from a typo.
    """
    job = entry.schedule.job
    if job in loom_jobs and job not in jobs:
        raise _error(
            entry, "job", f"job {job!r} cannot be scheduled: it takes no --usecase", fix=f"use one of {sorted(jobs)}"
        )
    if job not in jobs:
        close = difflib.get_close_matches(job, jobs, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _error(entry, "job", f"unknown job {job!r}", fix=f"{hint}use one of {sorted(jobs)}")
    parser = jobs[job].parser
    argv = _flag_argv(entry, parser)
    try:
        parsed = parser.parse_args(["--usecase", spec.name, *argv])
    except ArgumentRejected as err:
        raise _error(
            entry, "args", f"loom {job} rejects these arguments: {err}", entry.schedule.args, f"see loom {job} --help"
        ) from None
    model = getattr(parsed, "model", None)
    if isinstance(model, str) and spec.models:
        base = re.split(r"[@/]", model, maxsplit=1)[0]
        if base not in spec.models:
            raise _error(entry, "args.model", f"unknown model {base!r}", model, f"use one of {sorted(spec.models)}")
    endless = _never_ends(job, parsed)
    if endless:
        why, fix = endless
        raise _error(entry, "args", f"a scheduled run must end, but {why}", entry.schedule.args, fix)
    takes_profile = "--profile" in parser._option_string_actions
    return Planned(entry=entry, module=jobs[job].module, argv=tuple(argv), takes_profile=takes_profile)


def plan_schedules(spec: UseCase, jobs: Mapping[str, SchedulableJob], loom_jobs: Collection[str]) -> list[Planned]:
    """Every schedule of the use case (declared and implied), checked; all problems reported together."""
    planned: list[Planned] = []
    errors: list[SpecError] = []
    for entry in usecase_schedules(spec).values():
        try:
            planned.append(check_entry(spec, entry, jobs, loom_jobs))
        except SpecError as err:
            errors.append(err)
    if errors:
        raise errors[0] if len(errors) == 1 else SpecErrors(errors)
    return planned


def usecase_argument(text: str) -> str:
    """``--usecase`` as the scheduled command gets it: a name stays a name, a path becomes absolute
    (the commands run in the repository, not in the caller's folder)."""
    path = Path(text)
    return str(path.resolve()) if path.exists() else text
