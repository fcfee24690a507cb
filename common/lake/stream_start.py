"""Where a new streaming query over a Delta table starts: Delta's initial snapshot, or the table's first commit.

Delta's streaming source starts a new query on the table's *initial snapshot*: it lists the table's files and
sorts them with Spark jobs, and the query's offsets stay "in the snapshot" until it reads a commit made after
it started. Every restart recomputes that sorted list. ``loom stream`` starts its bronze readers (features,
triggers) after ingestion, so in a catch-up their offsets never leave the snapshot, and each restart paid
the recompute: about 9 s of a restart's 24 s in a fresh JVM (the kill test's day, load 1.5).

When a table's log still holds every commit from version 0 and no commit ever removed a file, reading its
commits from version 0 (``startingVersion=0``) gives the same rows as the snapshot: every file once, in
commit order. Its offsets then name commits, and a restart reads the log from its offset on. Bronze is
append-only until ``loom forget`` (a DELETE) or a compaction rewrites files; once a file was removed, or the
log's oldest commits are gone (``delta.logRetentionDuration``), a new query starts on the snapshot as before:
reading old commits would read files that were deleted (or, before a vacuum, rows that were forgotten).

The choice is made once, when the checkpoint is new, and written beside the checkpoint's own files: a
restart must read a batch that was planned but not committed the way it was planned (Delta re-reads a first
batch from ``startingVersion`` when one is given, from the snapshot when not).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.lake.delta import local_folder

START_FILE = "loom_starting_version"  # in the checkpoint folder; Spark ignores files it does not know
MAX_COMMITS = 5_000  # reading more commit files than this at a first start costs more than the snapshot
_FIRST_COMMIT = f"{0:020d}.json"


def stream_start_options(table: str, checkpoint: str) -> dict[str, str]:
    """The Delta reader options for a query over ``table`` whose checkpoint is ``checkpoint``.

    ``{"startingVersion": "0"}`` when the query started (or now starts) from the table's first commit; ``{}``
    (Delta's initial snapshot) for a query that started on the snapshot, a table whose history removed files
    or lost its oldest commits, or a table or checkpoint off the local file system.
    """
    folder, log = local_folder(checkpoint), local_folder(table)
    if folder is None or log is None:
        return {}
    recorded = folder / START_FILE
    if recorded.is_file():
        return {"startingVersion": recorded.read_text().strip()}
    if _has_offsets(folder) or not append_only_from_first_commit(log / "_delta_log"):
        return {}
    _write_atomically(recorded, "0")
    return {"startingVersion": "0"}


def append_only_from_first_commit(log: Path) -> bool:
    """Whether ``log`` (a ``_delta_log`` folder) holds every commit from version 0, at most
    :data:`MAX_COMMITS` of them, and none removes a file."""
    if not (log / _FIRST_COMMIT).is_file():
        return False
    versions = sorted(int(path.stem) for path in log.glob("*.json") if path.stem.isdigit())
    if len(versions) > MAX_COMMITS or versions != list(range(len(versions))):
        return False
    return not any(_removes_a_file(log / f"{version:020d}.json") for version in versions)


def _removes_a_file(commit: Path) -> bool:
    # a substring test first: only the lines that may be removes are parsed
    return any('"remove"' in line and "remove" in json.loads(line) for line in commit.read_text().splitlines())


def _has_offsets(checkpoint: Path) -> bool:
    offsets = checkpoint / "offsets"
    return offsets.is_dir() and any(path.name.isdigit() for path in offsets.iterdir())


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text)
    os.replace(partial, path)
