"""``loom schedule export|run --usecase churn``: the use case's schedules as Databricks
Asset Bundle jobs or a crontab, or run the jobs that are due, once.

Every exported definition calls the same entry points as ``loom <job>``: the
crontab runs ``.venv/bin/loom <job>``, the bundle runs ``jobs/<module>.py`` as a
Spark Python task, and ``schedule run`` runs ``python -m jobs.<module>``.

Each schedule's job and arguments are checked with the job's own argparse
parser, built here from the job's module and handed to common.schedules (common
never imports jobs; common/spec checks only the shape and the cron expression).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from common.schedules import (
    Planned,
    SchedulableJob,
    export_bundle,
    export_crontab,
    plan_schedules,
    raising,
    run_due,
    usecase_argument,
)
from common.spec import UseCase, load_usecase
from jobs.cli import JOBS
from jobs.runner import add_usecase_argument, build_parser, iso_time, main_for

DESCRIPTION = "Export the use case's schedules (Databricks Asset Bundle jobs or a crontab), or run the due jobs once."


@cache
def job_parser(job: str) -> argparse.ArgumentParser:
    """The argparse parser of ``loom <job>``, built from its module, raising instead of exiting."""
    return raising(build_parser(job, importlib.import_module(JOBS[job])))


def schedulable_jobs() -> dict[str, SchedulableJob]:
    """``loom`` jobs a schedule may name (those taking ``--usecase``) -> their file stem in jobs/ and parser."""
    return {
        name: SchedulableJob(module.rsplit(".", 1)[-1], job_parser(name))
        for name, module in JOBS.items()
        if name != "schedule" and "--usecase" in job_parser(name)._option_string_actions
    }


def plan(spec: UseCase) -> list[Planned]:
    """Every schedule of the use case (declared and implied), checked with the jobs' own parsers."""
    return plan_schedules(spec, schedulable_jobs(), JOBS)


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
