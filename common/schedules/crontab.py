"""Checked schedules -> a crontab whose lines run the ``loom`` console script."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from common.schedules.header import generated_header
from common.schedules.plan import Planned
from common.settings import PROJECT_ROOT, loom_home
from common.spec import UseCase


def export_crontab(spec: UseCase, planned: list[Planned], usecase: str, home: Path | None = None) -> str:
    """A crontab: one line per schedule, ``cd <repo> && flock -n <lock> <venv>/bin/loom <job> ... >> <log> 2>&1``.

    ``flock -n`` skips a tick while the previous run of the same schedule still
    holds its lock, so runs never overlap.
    """
    home = home or loom_home()
    folder = home / "schedule"
    loom = Path(sys.executable).parent / "loom"
    q = shlex.quote
    lines = [f"# {line}" for line in generated_header(spec, "cron", usecase)]
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
        about = f": {item.entry.schedule.description}" if item.entry.schedule.description else ""
        lines.append(f"# {item.name} ({item.source}){about}")
        lines.append(f"{item.cron} {line.replace('%', chr(92) + '%')}")  # cron reads a bare % as a newline
    return "\n".join(lines) + "\n"
