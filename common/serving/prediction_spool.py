"""The prediction log's spool: Parquet files of rows the sink could not take, appended by a later start.

The spool folder is ``<table>/_spool`` (:data:`SPOOL_FOLDER`): Delta readers and
VACUUM skip folders whose name starts with ``_``. The logger spools when the sink
still fails at shutdown, when its writer is stuck in a write at shutdown, and
during a long outage once too many rows wait (so memory stays bounded).

A file is one batch, named after the batch's Delta transaction id
(``<app id>-<version>.parquet``) and written under a temporary name then renamed,
so a reader never sees half a file. The next logger to start (any worker, later)
appends the spooled files first and deletes them (:func:`load_spool_file`):

* a file is locked while it is loaded, so two workers starting together do not
  both load it;
* it is appended under a transaction id of its own, so a file whose rows landed
  before a crash (appended, not yet deleted) is not appended again; nor is one
  whose original batch committed after all (a write that hung at shutdown);
* a file that is no Parquet file of rows is set aside as ``<name>.unreadable``
  (:class:`UnreadableSpoolFile`) rather than blocking the others.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.serving.prediction_rows import stamp_logged_at
from common.serving.prediction_sink import PredictionSink, Txn

SPOOL_FOLDER = "_spool"  # inside the table folder: Delta readers and VACUUM skip folders starting with "_"
_SPOOL_NAME = re.compile(r"^(?P<app>[A-Za-z0-9_.-]+)-(?P<seq>\d{10})\.parquet$")


class UnreadableSpoolFile(Exception):
    """A spool file that is no Parquet file of prediction rows (the message is where it was moved)."""


def write_spool_file(folder: Path, table: pa.Table, txn: Txn) -> Path:
    """``table`` as ``<app id>-<version>.parquet`` of ``txn``, written under a temporary name then renamed (atomic)."""
    path = folder / f"{txn.app_id}-{txn.version:010d}.parquet"
    partial = folder / f".{path.name}.{os.getpid()}.tmp"
    pq.write_table(table, partial)
    os.replace(partial, path)
    return path


def spooled_files(folder: Path) -> list[tuple[Path, Txn]]:
    """The spool files in ``folder``, oldest name first, each with the transaction id of its batch.

    Other files (temporary ones being written, ``.unreadable`` ones set aside) are left out.
    """
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.parquet")):
        match = _SPOOL_NAME.match(path.name)
        if match is not None:
            found.append((path, Txn(match["app"], int(match["seq"]))))
    return found


def load_spool_file(path: Path, sink: PredictionSink, original: Txn) -> int:
    """Append the spooled ``path`` (once) and delete it; the rows appended, 0 if another process has it.

    Raises :class:`UnreadableSpoolFile` (the file moved aside) when it cannot be read, and whatever
    the sink raises when it cannot take the rows (the file stays for a later attempt).
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - held open for the lock
    except FileNotFoundError:
        return 0  # another worker loaded it
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another worker is loading it now
        if os.fstat(handle.fileno()).st_nlink == 0:
            return 0  # loaded and deleted while we waited for the lock
        own = Txn(f"{original.app_id}-{original.version:010d}", 1)
        try:
            table = pq.read_table(handle)
        except Exception as err:  # truncated or foreign file
            aside = path.with_name(path.name + ".unreadable")
            os.replace(path, aside)
            raise UnreadableSpoolFile(str(aside)) from err
        landed = sink.written(original) or sink.written(own)  # written before the crash
        if not landed:
            sink.write(stamp_logged_at(table), own)
        path.unlink()
    return 0 if landed else table.num_rows
