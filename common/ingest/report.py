"""What one ingestion run did to one source, and the check that nothing was lost."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from common.errors import DataError, LoomError


@dataclass
class IngestReport:
    """Counts of one run over one source, summed over its micro-batches.

    ``by_reason`` counts quarantined records per check (the reason without the
    offending value, e.g. ``column amount: not a double``). Counts cover the
    batches this run processed: files ingested by an earlier run are not read
    again, so a second run over the same files reports zeros.
    """

    source: str
    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    failure: LoomError | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_batch(self, read: int, accepted: int, by_reason: dict[str, int]) -> None:
        """Add one micro-batch's counts (called from the streaming thread)."""
        with self._lock:
            self.read += read
            self.accepted += accepted
            self.quarantined += sum(by_reason.values())
            self.by_reason.update(by_reason)
            self.batches += 1

    def check(self) -> None:
        """Raise :class:`DataError` unless read = accepted + quarantined (and the reasons add up)."""
        if self.read != self.accepted + self.quarantined or self.quarantined != sum(self.by_reason.values()):
            raise DataError(
                f"ingestion of source {self.source!r} does not reconcile: read {self.read} records, "
                f"accepted {self.accepted} + quarantined {self.quarantined} "
                f"(by reason {sum(self.by_reason.values())}). Records were lost or duplicated; this is a bug. "
                "Fix: report it with the landing files; bronze and quarantine were not written for the failing batch"
            )


def render_reports(reports: list[IngestReport]) -> str:
    """The reports as a console table, one line per source and one per reason."""
    header = f"{'source':<16}{'read':>12}{'accepted':>12}{'quarantined':>13}{'batches':>9}"
    lines = [header, "-" * len(header)]
    for report in reports:
        lines.append(
            f"{report.source:<16}{report.read:>12,}{report.accepted:>12,}{report.quarantined:>13,}{report.batches:>9}"
        )
        for reason, count in sorted(report.by_reason.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  {reason:<51}{count:>9,}")
    return "\n".join(lines)
