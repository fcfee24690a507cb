"""Writing landing files the way an upstream system would: whole files, appearing atomically.

Each file is written under a hidden temporary name and renamed into place, so a
streaming reader never sees half a file (Spark's file source skips names that
start with ``.`` or ``_``). The writer counts files and rows per source and logs
every injected malformed record to ``<out>/_malformed.jsonl``.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

from common.errors import ConfigError
from common.generate.options import GenerateSummary
from common.lake.paths import landing_folder
from common.spec.sources import Source

MANIFEST = "_generated.json"
MALFORMED_LOG = "_malformed.jsonl"


def records_folder(name: str, source: Source, out: Path) -> str:
    """Where the generator writes the records of source ``name``: its landing folder, or, for a ``format: kafka``
    source (no folder), ``<out>/<name>``, as the JSON lines ``loom generate --to kafka`` then publishes."""
    return landing_folder(source, out) if source.path is not None else str(Path(out) / name)


class LandingWriter:
    """Writes the files of one generator run into per-source folders."""

    def __init__(self, out: Path, folders: dict[str, Path], *, overwrite: bool = False) -> None:
        self.out = out
        self.folders = folders
        for source, folder in folders.items():
            existing = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
            if existing and not overwrite:
                raise ConfigError(
                    f"landing folder of source {source!r} ({folder}) already holds {len(existing)} files; "
                    "generating into it would mix two data sets. "
                    "Fix: pass --out with an empty folder, or --overwrite to delete those files first"
                )
            for path in existing:
                path.unlink()
            folder.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        self.files: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.malformed: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._log = (out / MALFORMED_LOG).open("w", encoding="utf-8")

    def write(self, source: str, name: str, lines: list[str], header: str | None = None) -> str:
        """Write ``lines`` (plus ``header``) as file ``name`` of ``source``; returns the file name."""
        folder = self.folders[source]
        temporary = folder / f".{name}.tmp"
        with temporary.open("w", encoding="utf-8", newline="") as handle:
            if header is not None:
                handle.write(header + "\n")
            if lines:
                handle.write("\n".join(lines))
                handle.write("\n")
        os.replace(temporary, folder / name)
        self.files[source] += 1
        self.rows[source] += len(lines)
        return name

    def record_malformed(
        self,
        source: str,
        file: str,
        kind: str,
        *,
        column: str | None = None,
        value: str | None = None,
        record_id: str | None = None,
    ) -> None:
        """Log one injected malformed record (what the ingestion must quarantine, and why)."""
        self.malformed[source][kind] += 1
        entry = {"source": source, "file": file, "kind": kind, "column": column, "value": value, "id": record_id}
        self._log.write(json.dumps(entry) + "\n")

    def finish(self, facts: dict[str, float]) -> GenerateSummary:
        """Close the log, write ``_generated.json`` and return the summary."""
        self._log.close()
        summary = GenerateSummary(
            out=self.out,
            files=dict(self.files),
            rows=dict(self.rows),
            malformed={source: dict(kinds) for source, kinds in self.malformed.items()},
            facts=facts,
        )
        (self.out / MANIFEST).write_text(json.dumps(summary.as_dict(), indent=2, sort_keys=True) + "\n")
        return summary


def read_malformed_log(out: Path) -> list[dict]:
    """The malformed records a run injected (for tests and reconciliation reports)."""
    path = out / MALFORMED_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
