"""``loom schedule export|run --usecase churn``: the use case's schedules as Databricks
Asset Bundle jobs or a crontab, or run the jobs that are due, once.

Every exported definition calls the same entry points as ``loom <job>``: the
crontab runs ``.venv/bin/loom <job>``, the bundle runs ``jobs/<module>.py`` as a
Spark Python task, and ``schedule run`` runs ``python -m jobs.<module>``.

Each schedule's job and arguments are checked here with the job's own argparse
parser (common/spec checks only the shape and the cron expression).
"""

from __future__ import annotations

import argparse
import difflib
import fcntl
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import yaml

from common.errors import LoomError, SpecError, SpecErrors
from common.settings import PROJECT_ROOT, loom_home, paths
from common.spec import UseCase, load_usecase
from common.spec.schedules import ScheduleEntry, usecase_schedules
from jobs.cli import JOBS
from jobs.runner import add_usecase_argument, build_parser, iso_time, main_for

DESCRIPTION = "Export the use case's schedules (Databricks Asset Bundle jobs or a crontab), or run the due jobs once."

STATE_FILE = "schedule-state.json"
# With no state yet, only a tick in the current minute is due, as cron does when it starts:
# a first run never replays every schedule's last tick.
FIRST_RUN_WINDOW = timedelta(minutes=1)


# --- the jobs and their parsers ----------------------------------------------


class _ArgumentError(Exception):
    """argparse's complaint, raised instead of printing usage and exiting."""


def _raise(message: str) -> NoReturn:
    raise _ArgumentError(message)


@cache
def job_parser(job: str) -> argparse.ArgumentParser:
    """The argparse parser of ``loom <job>``, built from its module, raising instead of exiting."""
    parser = build_parser(job, importlib.import_module(JOBS[job]))
    parser.error = _raise  # type: ignore[method-assign]
    return parser


def schedulable_jobs() -> dict[str, str]:
    """``loom`` jobs a schedule may name -> their file stem in jobs/: those taking ``--usecase``."""
    return {
        name: module.rsplit(".", 1)[-1]
        for name, module in JOBS.items()
        if name != "schedule" and "--usecase" in job_parser(name)._option_string_actions
    }


def _never_ends(job: str, args: argparse.Namespace) -> tuple[str, str] | None:
    """(why, fix) when a job with these arguments runs until stopped: a scheduled run must end."""
    if job == "stream" and not args.available_now:
        return "stream runs until stopped", "add available-now: true to process what has landed, then stop"
    if job == "ingest" and args.mode == "stream":
        return "ingest --mode stream runs until stopped", "use mode: batch"
    return None


@dataclass(frozen=True)
class Planned:
    """A checked schedule: the job's file in jobs/ and its arguments after ``--usecase``."""

    entry: ScheduleEntry
    module: str
    argv: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def job(self) -> str:
        return self.entry.schedule.job

    @property
    def cron(self) -> str:
        return self.entry.schedule.cron


def yaml_path(entry: ScheduleEntry, key: str) -> str:
    """YAML path of one of a schedule's keys; an implied schedule's is the model's ``schedule``."""
    return entry.path if entry.implied else f"{entry.path}.{key}"


def _error(entry: ScheduleEntry, key: str, message: str, value: Any = None, fix: str | None = None) -> SpecError:
    return SpecError(message, file=entry.file, path=yaml_path(entry, key), value=value, fix=fix)


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


def check_entry(spec: UseCase, entry: ScheduleEntry, jobs: dict[str, str]) -> Planned:
    """One schedule -> :class:`Planned`, or a :class:`SpecError` naming the YAML path and the fix."""
    job = entry.schedule.job
    if job in JOBS and job not in jobs:
        raise _error(
            entry, "job", f"job {job!r} cannot be scheduled: it takes no --usecase", fix=f"use one of {sorted(jobs)}"
        )
    if job not in jobs:
        close = difflib.get_close_matches(job, jobs, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _error(entry, "job", f"unknown job {job!r}", fix=f"{hint}use one of {sorted(jobs)}")
    parser = job_parser(job)
    argv = _flag_argv(entry, parser)
    try:
        parsed = parser.parse_args(["--usecase", spec.name, *argv])
    except _ArgumentError as err:
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
    return Planned(entry=entry, module=jobs[job], argv=tuple(argv))


def plan(spec: UseCase) -> list[Planned]:
    """Every schedule of the use case (declared and implied), checked; all problems reported together."""
    jobs = schedulable_jobs()
    planned: list[Planned] = []
    errors: list[SpecError] = []
    for entry in usecase_schedules(spec).values():
        try:
            planned.append(check_entry(spec, entry, jobs))
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


# --- Quartz (Databricks) -------------------------------------------------------

_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def _compact(values: list[Any], low: int, high: int, names: tuple[str, ...] | None = None) -> str:
    """croniter's expanded values of one field -> the shortest Quartz text: *, a/k, or a-b,c lists."""
    if values == ["*"]:
        return "*"
    numbers = sorted({int(v) for v in values})
    if numbers == list(range(low, high + 1)):
        return "*"
    if names is None and len(numbers) >= 3:
        step = numbers[1] - numbers[0]
        if step >= 2 and numbers == list(range(numbers[0], high + 1, step)):
            return f"{numbers[0]}/{step}"
    label = (lambda n: names[n]) if names else str
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ",".join(label(r[0]) if len(r) == 1 else f"{label(r[0])}-{label(r[-1])}" for r in runs)


def to_quartz(cron: str) -> str:
    """A 5-field cron expression -> Quartz (seconds first, ``?`` in the unused day field, days as names).

    Raises ValueError when both day fields are restricted: cron fires when
    either matches, and Quartz cannot say that.
    """
    from croniter import croniter

    minute, hour, dom, month, dow = croniter(cron).expanded[:5]
    dom_any, dow_any = dom == ["*"], dow == ["*"]
    if not dom_any and not dow_any:
        raise ValueError(
            f"{cron!r} restricts both day-of-month and day-of-week (cron fires when either matches); "
            "Databricks (Quartz) cannot express that"
        )
    fields = [
        "0",
        _compact(minute, *_BOUNDS[0]),
        _compact(hour, *_BOUNDS[1]),
        "?" if not dow_any else _compact(dom, *_BOUNDS[2]),
        _compact(month, *_BOUNDS[3]),
        "?" if dow_any else _compact([int(d) % 7 for d in dow], *_BOUNDS[4], names=_DAYS),
    ]
    return " ".join(fields)


# --- export --------------------------------------------------------------------


def _header(spec: UseCase, target: str, usecase: str) -> list[str]:
    return [
        f"Loom schedules of use case {spec.name!r}; generated, do not edit: change the metadata and run",
        f"  loom schedule export --usecase {usecase} --target {target}",
        "Times are UTC.",
    ]


def export_crontab(spec: UseCase, planned: list[Planned], usecase: str, home: Path | None = None) -> str:
    """A crontab: one line per schedule, ``cd <repo> && flock -n <lock> <venv>/bin/loom <job> ... >> <log> 2>&1``.

    ``flock -n`` skips a tick while the previous run of the same schedule still
    holds its lock, so runs never overlap.
    """
    home = home or loom_home()
    folder = home / "schedule"
    loom = Path(sys.executable).parent / "loom"
    q = shlex.quote
    lines = [f"# {line}" for line in _header(spec, "cron", usecase)]
    lines += [
        f"# Each run appends its output to {folder}/<usecase>.<schedule>.log; a run that finds the",
        "# previous one still holding its lock is skipped. Install: crontab <this file> (replaces your",
        "# crontab) or append it to `crontab -l`. CRON_TZ is honoured by cronie; elsewhere run cron in UTC.",
        "# Jobs that run at the same time need a shared Redis: set REDIS_URL here, or `loom redis start`.",
        "CRON_TZ=UTC",
        f"LOOM_HOME={q(str(home))}",
    ]
    for item in planned:
        base = folder / f"{spec.name}.{item.name}"
        # the console script when installed, else the same entry point as a module
        entry = [str(loom), item.job] if loom.is_file() else [sys.executable, "-m", f"jobs.{item.module}"]
        job = " ".join(q(part) for part in [*entry, "--usecase", usecase, *item.argv])
        line = (
            f"cd {q(str(PROJECT_ROOT))} && mkdir -p {q(str(folder))} && "
            f"flock -n {q(f'{base}.lock')} {job} >> {q(f'{base}.log')} 2>&1"
        )
        source = f"implied by {item.entry.path}" if item.entry.implied else item.entry.path
        about = f": {item.entry.schedule.description}" if item.entry.schedule.description else ""
        lines.append(f"# {item.name} ({source}){about}")
        lines.append(f"{item.cron} {line.replace('%', chr(92) + '%')}")  # cron reads a bare % as a newline
    return "\n".join(lines) + "\n"


def export_bundle(spec: UseCase, planned: list[Planned], usecase: str, out_dir: Path | None = None) -> str:
    """A Databricks Asset Bundle file: ``resources.jobs`` with one scheduled Spark Python task per schedule.

    Paths are relative to ``out_dir`` (where the file is written; bundle paths
    are relative to the file declaring them). The repository is the bundle root:
    its wheel (built by the ``artifacts`` entry) provides ``common`` and ``jobs``,
    and the synced ``metadata/`` folder the use case.
    """
    out_dir = (out_dir or PROJECT_ROOT).resolve()

    def rel(path: Path) -> str:
        return Path(os.path.relpath(path, out_dir)).as_posix()

    jobs: dict[str, Any] = {}
    errors: list[SpecError] = []
    for item in planned:
        try:
            quartz = to_quartz(item.cron)
        except ValueError as err:
            errors.append(
                SpecError(
                    str(err),
                    file=item.entry.file,
                    path=yaml_path(item.entry, "cron"),
                    fix="split it into two schedules",
                )
            )
            continue
        parameters = ["--usecase", f"${{workspace.file_path}}/metadata/{spec.name}", *item.argv]
        if "--profile" in job_parser(item.job)._option_string_actions and "--profile" not in item.argv:
            parameters += ["--profile", "databricks"]
        description = item.entry.schedule.description or f"loom {item.job} for use case {spec.name}"
        source = f"implied by {item.entry.path}" if item.entry.implied else item.entry.path
        jobs[f"loom_{spec.name}_{item.name}"] = {
            "name": f"loom {spec.name} {item.name}",
            "description": f"{description} ({source}; generated by loom schedule export)",
            "max_concurrent_runs": 1,  # a tick that finds the previous run going waits: runs never overlap
            "schedule": {"quartz_cron_expression": quartz, "timezone_id": "UTC", "pause_status": "UNPAUSED"},
            "tags": {"loom_usecase": spec.name, "loom_schedule": item.name},
            "tasks": [
                {
                    "task_key": item.job,
                    "existing_cluster_id": "${var.loom_cluster_id}",
                    "spark_python_task": {
                        "python_file": rel(PROJECT_ROOT / "jobs" / f"{item.module}.py"),
                        "parameters": parameters,
                    },
                    "libraries": [{"whl": rel(PROJECT_ROOT / "dist") + "/*.whl"}],
                }
            ],
        }
    if errors:
        raise errors[0] if len(errors) == 1 else SpecErrors(errors)
    document = {
        "variables": {
            "loom_cluster_id": {
                "description": "id of the cluster (Delta, the Loom wheel's dependencies) that runs Loom's jobs"
            }
        },
        "artifacts": {
            "loom_wheel": {
                "type": "whl",
                "path": rel(PROJECT_ROOT),
                "build": "python3 -m pip wheel --no-deps -w dist .",
            }
        },
        "resources": {"jobs": jobs},
    }
    folder = Path(usecase)
    if folder.exists() and folder.resolve() != (PROJECT_ROOT / "metadata" / spec.name).resolve():
        print(
            f"loom schedule: note: the bundle reads metadata/{spec.name} from the bundle root, not {usecase}",
            file=sys.stderr,
        )
    header = _header(spec, "databricks", usecase) + [
        "Include this file from databricks.yml (the repository is the bundle root), set var loom_cluster_id,",
        "then: databricks bundle deploy. Paths are relative to this file.",
    ]
    text = yaml.safe_dump(document, sort_keys=False, width=200)
    return "".join(f"# {line}\n" for line in header) + text


# --- run -----------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def read_state(path: Path) -> dict[str, Any]:
    """The scheduler's state: per use case and schedule, the last time checked and the last run."""
    if not path.is_file():
        return {"version": 1, "usecases": {}}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LoomError(f"{path} is not valid JSON ({err}). Fix: delete it (the next run starts afresh)") from None
    state.setdefault("usecases", {})
    return state


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write the state atomically: a crash leaves the old file or the new one, never half of it."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def due(planned: list[Planned], known: dict[str, Any], now: datetime) -> list[tuple[Planned, datetime]]:
    """The schedules with a tick in (last checked, now], each once, earliest tick first.

    A schedule never checked before looks back :data:`FIRST_RUN_WINDOW` only.
    """
    found = []
    for item in planned:
        checked = known.get(item.name, {}).get("checked")
        since = _parse_iso(checked) if checked else now - FIRST_RUN_WINDOW
        tick = item.entry.schedule.latest_tick(now)
        if tick > since:
            found.append((item, tick))
    return sorted(found, key=lambda pair: (pair[1], pair[0].name))


def command(item: Planned, usecase: str) -> list[str]:
    """The subprocess a scheduled run starts: ``python -m jobs.<module> --usecase ... <args>``."""
    return [sys.executable, "-m", f"jobs.{item.module}", "--usecase", usecase, *item.argv]


def show_due(
    spec: UseCase, planned: list[Planned], usecase: str, now: datetime, todo: list[tuple[Planned, datetime]]
) -> None:
    """Print one line per schedule: ``due <name> tick <time>: <command>`` or ``wait <name> next <time>``."""
    print(f"schedule {spec.name} at {_iso(now)}: {len(todo)} of {len(planned)} due")
    due_names = {item.name for item, _ in todo}
    for item in planned:
        if item.name not in due_names:
            print(f"  wait {item.name} next {_iso(item.entry.schedule.next_tick(now))}")
    for item, tick in todo:
        print(f"  due  {item.name} tick {_iso(tick)}: {shlex.join(command(item, usecase))}")


@contextmanager
def _exclusive(lock: Path) -> Iterator[bool]:
    """Hold ``lock`` for the block; yields False when another ``schedule run`` holds it."""
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_due(spec: UseCase, planned: list[Planned], usecase: str, now: datetime, dry_run: bool = False) -> int:
    """Run each due schedule once, in order, recording it in ``$LOOM_HOME/schedule-state.json``.

    The state advances after each job finishes, so a run killed half-way runs
    the rest next time (jobs are idempotent). Returns 1 if a job failed.
    """
    home = loom_home() if dry_run else paths().home  # a dry run creates nothing
    state_path = home / STATE_FILE
    if dry_run:
        show_due(spec, planned, usecase, now, due(planned, read_state(state_path)["usecases"].get(spec.name, {}), now))
        return 0
    with _exclusive(home / "schedule-state.lock") as mine:
        if not mine:
            print(f"another `loom schedule run` holds {home / 'schedule-state.lock'}; nothing to do")
            return 0
        state = read_state(state_path)
        known = state["usecases"].setdefault(spec.name, {})
        todo = due(planned, known, now)
        show_due(spec, planned, usecase, now, todo)
        due_names = {item.name for item, _ in todo}
        for item in planned:
            if item.name not in due_names:
                record = known.setdefault(item.name, {})
                record["checked"] = _iso(max(now, _parse_iso(record.get("checked", _iso(now)))))
        write_state(state_path, state)
        failed = 0
        for item, tick in todo:
            print(f"  run  {item.name}", flush=True)
            started = time.monotonic()
            code = subprocess.run(command(item, usecase), cwd=PROJECT_ROOT, check=False).returncode
            seconds = time.monotonic() - started
            known[item.name] = {
                "checked": _iso(now),
                "last_tick": _iso(tick),
                "last_run": _iso(datetime.now(UTC)),
                "exit_code": code,
                "seconds": round(seconds, 3),
            }
            write_state(state_path, state)
            print(f"  done {item.name}: exit {code} in {seconds:.1f} s", flush=True)
            failed += code != 0
        return 1 if failed else 0


# --- the job -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    export = actions.add_parser("export", help="write job definitions", description="Write job definitions.")
    add_usecase_argument(export)
    export.add_argument("--target", required=True, choices=["databricks", "cron"], help="bundle jobs YAML or crontab")
    export.add_argument("--out", type=Path, help="file to write (default: print)")
    run = actions.add_parser("run", help="run the due jobs once", description="Run the jobs that are due, once.")
    add_usecase_argument(run)
    run.add_argument("--now", type=iso_time, help="evaluate as of this time (ISO 8601, UTC; default: now)")
    run.add_argument("--dry-run", action="store_true", help="print what is due; run nothing, record nothing")


def run(args: argparse.Namespace) -> int:
    spec = load_usecase(args.usecase)
    planned = plan(spec)
    usecase = usecase_argument(args.usecase)
    if args.action == "run":
        return run_due(spec, planned, usecase, args.now or datetime.now(UTC), dry_run=args.dry_run)
    if not planned:
        print(f"loom schedule: note: use case {spec.name!r} declares no schedules", file=sys.stderr)
    if args.target == "cron":
        text = export_crontab(spec, planned, usecase)
    else:
        text = export_bundle(spec, planned, args.usecase, args.out.resolve().parent if args.out else None)
    if args.out is None:
        print(text, end="")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(planned)} schedules, target {args.target})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("schedule", __import__(__name__)))
