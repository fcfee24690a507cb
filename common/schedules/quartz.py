"""5-field cron -> Quartz, the cron dialect of Databricks job schedules."""

from __future__ import annotations

from typing import Any

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
