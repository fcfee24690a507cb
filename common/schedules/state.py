"""The due-run state of ``loom schedule run``: ``$LOOM_HOME/schedule-state.json`` and its lock.

Per use case and schedule: the last time checked, and the last run (tick,
time, exit code, seconds). Times are ISO 8601 in UTC with a ``Z``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.errors import LoomError

STATE_FILE = "schedule-state.json"
LOCK_FILE = "schedule-state.lock"


def iso(moment: datetime) -> str:
    """``moment`` as the state writes it: ISO 8601 in UTC, ``Z`` for the zone."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """A time the state holds (see :func:`iso`), as an aware UTC datetime."""
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


@contextmanager
def exclusive(lock: Path) -> Iterator[bool]:
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
