"""What a generator is asked for, and what it reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from common.errors import ConfigError


@dataclass(frozen=True)
class GenerateOptions:
    """Size, randomness and dirt of one generated data set."""

    customers: int = 1000
    days: int = 7
    seed: int = 7
    start: date = date(2026, 1, 1)
    malformed_rate: float = 0.01
    late_rate: float = 0.02
    events_per_day: float = 4.0
    rows_per_file: int = 250_000
    drift_at: date | None = None  # the world changes at 00:00 UTC of this day (common/generate/churn.py)

    def __post_init__(self) -> None:
        checks = [
            (self.customers >= 1, "--customers", self.customers, "use at least 1"),
            (self.days >= 1, "--days", self.days, "use at least 1"),
            (0.0 <= self.malformed_rate <= 0.5, "--malformed-rate", self.malformed_rate, "use a share in [0, 0.5]"),
            (0.0 <= self.late_rate <= 1.0, "--late-rate", self.late_rate, "use a share in [0, 1]"),
            (self.events_per_day > 0, "--events-per-day", self.events_per_day, "use a positive number"),
            (self.rows_per_file >= 1, "--rows-per-file", self.rows_per_file, "use at least 1"),
        ]
        if self.drift_at is not None:
            last = self.start + timedelta(days=self.days - 1)
            checks.append(
                (
                    self.start < self.drift_at <= last,
                    "--drift-at",
                    self.drift_at.isoformat(),
                    f"pick a day after --start {self.start.isoformat()} and at most {last.isoformat()}",
                )
            )
        for ok, option, value, fix in checks:
            if not ok:
                raise ConfigError(f"{option} {value!r} is out of range. Fix: {fix}")


DEMO_CUSTOMERS = 1000
DEMO_DAYS = 14


def demo_options(end: date | None = None, customers: int = DEMO_CUSTOMERS, days: int = DEMO_DAYS) -> GenerateOptions:
    """The data set of ``loom demo``: ``days`` days ending the day before ``end`` (default today, UTC).

    Ending at today keeps the online features younger than their TTL, so the
    demo's online predictions use them, as in production.
    """
    end = end or datetime.now(UTC).date()
    return GenerateOptions(customers=customers, days=days, start=end - timedelta(days=days))


@dataclass
class GenerateSummary:
    """Counts of one generator run; also written to ``<out>/_generated.json``.

    ``malformed`` maps source -> kind of injected problem -> count; each injected
    record is listed in ``<out>/_malformed.jsonl`` (source, file, kind, column, value, id).
    """

    out: Path
    files: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    malformed: dict[str, dict[str, int]] = field(default_factory=dict)
    facts: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "out": str(self.out),
            "files": self.files,
            "rows": self.rows,
            "malformed": self.malformed,
            "facts": self.facts,
        }

    def render(self) -> str:
        """A small table for the console."""
        lines = [f"landing files in {self.out}", f"{'source':<12}{'files':>8}{'rows':>14}{'malformed':>12}"]
        for source in sorted(self.rows):
            bad = sum(self.malformed.get(source, {}).values())
            lines.append(f"{source:<12}{self.files.get(source, 0):>8}{self.rows[source]:>14,}{bad:>12,}")
        for source, kinds in sorted(self.malformed.items()):
            for kind, count in sorted(kinds.items()):
                lines.append(f"  {source}.{kind}: {count}")
        for name, value in self.facts.items():
            lines.append(f"{name}: {value:g}")
        return "\n".join(lines)
