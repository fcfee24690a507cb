"""Where the prediction log's batches go: the :class:`PredictionSink` interface and its Delta table.

:class:`DeltaPredictionSink` appends with delta-rs, so the serving process needs
no JVM. Several workers may append to the same table: delta-rs retries an
append whose commit lost the race.

Each batch carries a Delta transaction id (:class:`Txn`): an app id and a
version that only grows for it. The writer asks :meth:`PredictionSink.written`
before retrying a batch whose write reported an error, so a write that
committed anyway is not appended twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa


@dataclass(frozen=True)
class Txn:
    """A Delta transaction id: ``app_id`` and a version that only grows for that app id."""

    app_id: str
    version: int


class PredictionSink(ABC):
    """Where batches of prediction rows go."""

    @abstractmethod
    def write(self, batch: pa.Table, txn: Txn) -> None:
        """Append ``batch`` atomically, recording ``txn``; raise on failure (the logger retries)."""

    def written(self, txn: Txn) -> bool:
        """Has a batch with ``txn`` (or a later version of its app id) been committed? Default: unknown, no."""
        return False

    def __str__(self) -> str:
        return type(self).__name__


class DeltaPredictionSink(PredictionSink):
    """Appends to the Delta table at ``path`` with delta-rs (created by the first append).

    The sink keeps one open :class:`deltalake.DeltaTable` and brings it up to date with
    ``update_incremental`` (which reads only the commits made since, by this process or another;
    about 2 ms) before each write and each :meth:`written`. Opening the table anew for every
    write replayed its log from the last checkpoint each time (up to 100 commit files): a
    2,500-row append to a table of 60 commits cost about 61 ms of CPU that way (all threads,
    delta-rs' own included), about 24 ms now. Up to date, :meth:`written`
    sees the transaction ids other workers committed and a schema merge starts from the
    latest schema.

    Used by one thread at a time (the logger's writer thread).
    """

    def __init__(self, path: str | Path, max_commit_retries: int = 50) -> None:
        self.path = str(path)
        # several workers append every few seconds: a lost commit race is normal, retry it
        self.max_commit_retries = max_commit_retries
        self._table: Any = None  # the open DeltaTable, once the table exists

    def _current(self) -> Any:
        """The open table brought up to date, or None when there is no table yet."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        if self._table is None:
            try:
                self._table = DeltaTable(self.path)
            except TableNotFoundError:
                return None
        else:
            try:
                self._table.update_incremental()
            except Exception:  # the snapshot may be unusable after a failure: open it afresh next time
                self._table = None
                raise
        return self._table

    def write(self, batch: pa.Table, txn: Txn) -> None:
        """Append ``batch`` to the table with ``txn`` recorded in the same commit."""
        from deltalake import CommitProperties, Transaction, write_deltalake

        table = self._current()
        try:
            write_deltalake(
                self.path if table is None else table,
                batch,
                mode="append",
                schema_mode="merge",  # a model with another entity key adds its key column
                commit_properties=CommitProperties(
                    app_transactions=[Transaction(txn.app_id, txn.version)],
                    max_commit_retries=self.max_commit_retries,
                ),
            )
        except Exception:
            self._table = None  # whatever state the failure left: reopen on the next call
            raise

    def written(self, txn: Txn) -> bool:
        """Has the table committed ``txn`` or a later version of its app id (False when no table yet)?"""
        table = self._current()
        if table is None:
            return False
        committed = table.transaction_version(txn.app_id)
        return committed is not None and committed >= txn.version

    def __str__(self) -> str:
        return f"Delta table {self.path}"
