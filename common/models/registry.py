"""The registry policy: aliases are the deployment mechanism.

* every trained version gets ``@challenger``;
* ``@champion`` moves to it when it beats the current champion on the same
  holdout by the promotion rule, or when there is no champion yet;
* ``rollback`` moves ``@champion`` back to the version that held it before.

Every move is recorded in the registry itself: the registered model's tag
``loom.champion_history`` lists the champions in order, ``loom.last_move``
says what moved, when and why, and each version carries ``loom.champion_since``
or ``loom.rolled_back_at``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from common.errors import ConfigError, StoreError
from common.settings import Paths

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "loom.champion_history"
LAST_MOVE_TAG = "loom.last_move"


@dataclass(frozen=True)
class Move:
    """One move of @champion."""

    model: str
    from_version: int | None
    to_version: int
    reason: str

    def describe(self) -> str:
        start = f"v{self.from_version}" if self.from_version is not None else "none"
        return f"@champion of {self.model}: {start} -> v{self.to_version} ({self.reason})"


def client(work: Paths | None = None) -> Any:
    """An MlflowClient on Loom's tracking/registry store (of ``work``, default $LOOM_HOME)."""
    from mlflow import MlflowClient

    from common.runtime.tracking import configure

    uri = configure(work)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def version_by_alias(name: str, alias: str, mlflow_client: Any | None = None) -> int | None:
    """The version ``name@alias`` points to, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    mlflow_client = mlflow_client or client()
    try:
        return int(mlflow_client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def champion_history(name: str, mlflow_client: Any | None = None) -> list[int]:
    """Versions that held @champion, oldest first (rolled-back ones removed)."""
    mlflow_client = mlflow_client or client()
    tags = mlflow_client.get_registered_model(name).tags
    return [int(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _record(mlflow_client: Any, move: Move, history: list[int]) -> None:
    mlflow_client.set_registered_model_tag(move.model, HISTORY_TAG, json.dumps(history))
    mlflow_client.set_registered_model_tag(
        move.model,
        LAST_MOVE_TAG,
        json.dumps({"from": move.from_version, "to": move.to_version, "reason": move.reason, "at": _now()}),
    )


def set_challenger(name: str, version: int, mlflow_client: Any | None = None) -> None:
    """Point @challenger at ``version``."""
    (mlflow_client or client()).set_registered_model_alias(name, CHALLENGER, str(version))


def promote(name: str, version: int, reason: str, mlflow_client: Any | None = None) -> Move:
    """Move @champion to ``version`` and record why."""
    mlflow_client = mlflow_client or client()
    current = version_by_alias(name, CHAMPION, mlflow_client)
    history = champion_history(name, mlflow_client)
    if current is not None and (not history or history[-1] != current):
        history.append(current)  # moved by hand outside Loom: keep it so rollback can return to it
    mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
    mlflow_client.set_model_version_tag(name, str(version), "loom.champion_since", _now())
    move = Move(name, current, version, reason)
    _record(mlflow_client, move, history + [version])
    return move


def rollback(name: str, mlflow_client: Any | None = None) -> Move:
    """Move @champion back to the version that held it before the current one."""
    from mlflow.exceptions import MlflowException

    mlflow_client = mlflow_client or client()
    try:
        history = champion_history(name, mlflow_client)
    except MlflowException as err:
        raise ConfigError(
            f"model {name!r} is not in the registry. Fix: train it first (`loom train --model {name}`)"
        ) from err
    current = version_by_alias(name, CHAMPION, mlflow_client)
    if current is None:
        raise StoreError(f"model {name!r} has no @champion to roll back. Fix: train or promote a version first")
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise StoreError(
            f"model {name!r}: v{current} is the first champion; there is no previous one to roll back to. "
            "Fix: promote another version instead"
        )
    previous = history[-1]
    mlflow_client.set_registered_model_alias(name, CHAMPION, str(previous))
    mlflow_client.set_model_version_tag(name, str(current), "loom.rolled_back_at", _now())
    move = Move(name, current, previous, "rollback")
    _record(mlflow_client, move, history)
    return move
