"""Event-combination matching for one entity and one trigger: pure Python, no Spark.

The streaming operator keeps one :class:`TriggerState` per entity and trigger
and calls :func:`advance` with each micro-batch's events. Semantics
(docs/triggers.md):

* ``any_of``: every event that meets a condition completes the trigger.
* ``all_of`` within W: an event completes it at its time ``t`` when every
  condition is met by some event in ``[t - W, t]`` (one event may meet several).
* ``sequence`` within W: an event meeting the last condition completes it at
  ``t`` when earlier conditions are met by events at strictly increasing
  times ``t0 < t1 < ... < t`` with ``t - t0 <= W``. Equal times are not "then".
* A completion fires unless another firing of the trigger for the entity is
  less than ``cooldown`` away (before or after: events may arrive out of
  order); each event completes a trigger at most once, so duplicates and
  retries never fire twice.
* Out of order: a late event (within the watermark) that completes a
  combination with events already seen fires at the combination's last event.
  Events older than the watermark never reach the operator (Spark drops them
  from stateful operators); they still count in features.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field

# an event in state: (time µs, event id, condition index)
Entry = tuple[int, str, int]


@dataclass
class TriggerState:
    """What one entity's trigger remembers between micro-batches (bounded by the watermark)."""

    events: list[Entry] = field(default_factory=list)  # sorted by (time, id, condition)
    completed: dict[str, int] = field(default_factory=dict)  # event id -> its time: already evaluated
    fired: list[int] = field(default_factory=list)  # firing times, sorted

    def to_json(self) -> dict:
        return {"e": [list(e) for e in self.events], "c": self.completed, "f": self.fired}

    @classmethod
    def from_json(cls, data: dict) -> TriggerState:
        return cls([tuple(e) for e in data.get("e", [])], dict(data.get("c", {})), list(data.get("f", [])))


@dataclass(frozen=True)
class Firing:
    time_us: int
    event_id: str


@dataclass(frozen=True)
class Rule:
    kind: str  # all_of | any_of | sequence
    conditions: int
    within_us: int
    cooldown_us: int
    max_events: int = 10_000  # per entity and trigger: a hard bound on state


def _completes_all_of(rule: Rule, events: list[Entry], t: int) -> bool:
    seen = {c for ts, _, c in events if t - rule.within_us <= ts <= t}
    return len(seen) == rule.conditions


def _completes_sequence(rule: Rule, events: list[Entry], t: int) -> bool:
    # latest event of each earlier condition, walking backwards: maximizes the first time
    bound = t
    for condition in range(rule.conditions - 2, -1, -1):
        candidates = [ts for ts, _, c in events if c == condition and ts < bound]
        if not candidates:
            return False
        bound = max(candidates)
    return t - bound <= rule.within_us


def _completions(rule: Rule, state: TriggerState) -> list[Entry]:
    """Events (not yet evaluated) at which the trigger's combination is complete, in time order."""
    out: list[Entry] = []
    for entry in state.events:
        ts, event_id, condition = entry
        if event_id in state.completed:
            continue
        if rule.kind == "any_of" or rule.conditions == 1:
            done = True
        elif rule.kind == "all_of":
            done = _completes_all_of(rule, state.events, ts)
        else:
            done = condition == rule.conditions - 1 and _completes_sequence(rule, state.events, ts)
        if done and (not out or out[-1][1] != event_id):
            out.append(entry)
    return out


def advance(rule: Rule, state: TriggerState, new_events: list[Entry], watermark_us: int) -> list[Firing]:
    """Add ``new_events`` (an event meeting several conditions appears once per condition),
    return the firings they cause, and prune what the watermark makes irrelevant."""
    known = {(e[1], e[2]) for e in state.events}
    for entry in new_events:
        if (entry[1], entry[2]) not in known:
            insort(state.events, entry)
            known.add((entry[1], entry[2]))
    firings: list[Firing] = []
    for ts, event_id, _ in _completions(rule, state):
        state.completed[event_id] = ts
        if rule.cooldown_us and any(abs(ts - f) < rule.cooldown_us for f in state.fired):
            continue
        insort(state.fired, ts)
        firings.append(Firing(ts, event_id))
    prune(rule, state, watermark_us)
    return firings


def prune(rule: Rule, state: TriggerState, watermark_us: int) -> None:
    """Forget events no future combination can use and firings no future cooldown can see."""
    horizon = watermark_us - rule.within_us
    state.events = [e for e in state.events if e[0] >= horizon][-rule.max_events :]
    state.completed = {k: v for k, v in state.completed.items() if v >= horizon}
    if rule.cooldown_us:
        state.fired = [f for f in state.fired if f > watermark_us - rule.cooldown_us]
    else:
        state.fired = []


def is_empty(state: TriggerState) -> bool:
    return not state.events and not state.fired
