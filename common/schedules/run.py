"""``loom schedule run``: run each due schedule once, in order, and record it in the state."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime

from common.schedules.due import due
from common.schedules.plan import Planned
from common.schedules.state import LOCK_FILE, STATE_FILE, exclusive, iso, parse_iso, read_state, write_state
from common.settings import PROJECT_ROOT, loom_home, paths
from common.spec import UseCase


def command(item: Planned, usecase: str) -> list[str]:
    """The subprocess a scheduled run starts: ``python -m jobs.<module> --usecase ... <args>``."""
    return [sys.executable, "-m", f"jobs.{item.module}", "--usecase", usecase, *item.argv]


def show_due(
    spec: UseCase, planned: list[Planned], usecase: str, now: datetime, todo: list[tuple[Planned, datetime]]
) -> None:
    """Print one line per schedule: ``due <name> tick <time>: <command>`` or ``wait <name> next <time>``."""
    print(f"schedule {spec.name} at {iso(now)}: {len(todo)} of {len(planned)} due")
    due_names = {item.name for item, _ in todo}
    for item in planned:
        if item.name not in due_names:
            print(f"  wait {item.name} next {iso(item.entry.schedule.next_tick(now))}")
    for item, tick in todo:
        print(f"  due  {item.name} tick {iso(tick)}: {shlex.join(command(item, usecase))}")


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
    with exclusive(home / LOCK_FILE) as mine:
        if not mine:
            print(f"another `loom schedule run` holds {home / LOCK_FILE}; nothing to do")
            return 0
        state = read_state(state_path)
        known = state["usecases"].setdefault(spec.name, {})
        todo = due(planned, known, now)
        show_due(spec, planned, usecase, now, todo)
        due_names = {item.name for item, _ in todo}
        for item in planned:
            if item.name not in due_names:
                record = known.setdefault(item.name, {})
                record["checked"] = iso(max(now, parse_iso(record.get("checked", iso(now)))))
        write_state(state_path, state)
        failed = 0
        for item, tick in todo:
            print(f"  run  {item.name}", flush=True)
            started = time.monotonic()
            code = subprocess.run(command(item, usecase), cwd=PROJECT_ROOT, check=False).returncode
            seconds = time.monotonic() - started
            known[item.name] = {
                "checked": iso(now),
                "last_tick": iso(tick),
                "last_run": iso(datetime.now(UTC)),
                "exit_code": code,
                "seconds": round(seconds, 3),
            }
            write_state(state_path, state)
            print(f"  done {item.name}: exit {code} in {seconds:.1f} s", flush=True)
            failed += code != 0
        return 1 if failed else 0
