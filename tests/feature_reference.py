"""A deliberately naive, pure-Python statement of the time semantics (docs/time-semantics.md).

Tests compare the Spark engines against it: for entity e at time t, a feature
with slide s and window W aggregates e's events with
floor(t/s)*s + s - W <= ts <= t that match its condition.
"""

from __future__ import annotations

import math
from datetime import datetime


def window_start(t_seconds: float, slide: int, window: int) -> float:
    return math.floor(t_seconds / slide) * slide + slide - window


def reference_value(events, entity, t: datetime, agg, value_fn, where_fn, slide, window):
    """``events``: dicts with customer_id, ts (datetime), event_id and raw columns."""
    t_s = t.timestamp()
    start = window_start(t_s, slide, window)
    rows = [e for e in events if e["customer_id"] == entity and start <= e["ts"].timestamp() <= t_s and where_fn(e)]
    values = [(e["ts"], e["event_id"], value_fn(e)) for e in rows]
    values = [v for v in values if v[2] is not None]
    nums = [v[2] for v in values]
    if agg == "count":
        return float(len(values))
    if agg == "sum":
        return float(sum(nums)) if nums else 0.0
    if agg == "avg":
        return sum(nums) / len(nums) if nums else None
    if agg == "min":
        return min(nums) if nums else None
    if agg == "max":
        return max(nums) if nums else None
    if agg == "stddev":
        if len(nums) < 2:
            return None
        mean = sum(nums) / len(nums)
        return math.sqrt(sum((x - mean) ** 2 for x in nums) / (len(nums) - 1))
    if agg == "count_distinct":
        return float(len({str(x) for x in nums}))
    if agg == "last":
        return float(max(values)[2]) if values else None
    raise ValueError(agg)
