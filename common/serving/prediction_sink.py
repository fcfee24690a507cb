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
    """Appends to the Delta table at ``path`` with delta-rs (created by the first append)."""

    def __init__(self, path: str | Path, max_commit_retries: int = 50) -> None:
        self.path = str(path)
        # several workers append every few seconds: a lost commit race is normal, retry it
        self.max_commit_retries = max_commit_retries

    def write(self, batch: pa.Table, txn: Txn) -> None:
        """Append ``batch`` to the table with ``txn`` recorded in the same commit."""
        from deltalake import CommitProperties, Transaction, write_deltalake

        write_deltalake(
            self.path,
            batch,
            mode="append",
            schema_mode="merge",  # a model with another entity key adds its key column
            commit_properties=CommitProperties(
                app_transactions=[Transaction(txn.app_id, txn.version)], max_commit_retries=self.max_commit_retries
            ),
        )

    def written(self, txn: Txn) -> bool:
        """Has the table committed ``txn`` or a later version of its app id (False when no table yet)?"""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            committed = DeltaTable(self.path).transaction_version(txn.app_id)
        except TableNotFoundError:
            return False
        return committed is not None and committed >= txn.version

    def __str__(self) -> str:
        return f"Delta table {self.path}"
