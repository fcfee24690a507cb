"""Which schedules are due: a tick since they were last checked, each once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from common.schedules.plan import Planned
from common.schedules.state import parse_iso

# With no state yet, only a tick in the current minute is due, as cron does when it starts:
# a first run never replays every schedule's last tick.
FIRST_RUN_WINDOW = timedelta(minutes=1)


def due(planned: list[Planned], known: dict[str, Any], now: datetime) -> list[tuple[Planned, datetime]]:
    """The schedules with a tick in (last checked, now], each once, earliest tick first.

    ``known`` is the use case's part of the state (schedule -> its record). A
    schedule never checked before looks back :data:`FIRST_RUN_WINDOW` only.
    """
    found = []
    for item in planned:
        checked = known.get(item.name, {}).get("checked")
        since = parse_iso(checked) if checked else now - FIRST_RUN_WINDOW
        tick = item.entry.schedule.latest_tick(now)
        if tick > since:
            found.append((item, tick))
    return sorted(found, key=lambda pair: (pair[1], pair[0].name))
