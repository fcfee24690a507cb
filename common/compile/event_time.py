"""Event times as the plan carries them: integer microseconds since the Unix epoch, in UTC.

One conversion for every reader of such a number (the online store's vectors, the trigger operator's firings,
the REST answers), so that none of them goes through local time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    """Epoch microseconds as an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=int(micros))


def to_micros(moment: datetime) -> int:
    """``moment`` as integer microseconds since the epoch (a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // _ONE_MICROSECOND
