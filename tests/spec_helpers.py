"""Build variants of the churn metadata in a temporary folder for error tests."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import yaml

CHURN = Path(__file__).resolve().parent.parent / "metadata" / "churn"


def churn_documents() -> dict[str, dict[str, Any]]:
    """The churn use case's YAML files, parsed, keyed by file name."""
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(CHURN.glob("*.yaml"))}


def write_usecase(folder: Path, documents: dict[str, dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in documents.items():
        (folder / name).write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def mutated_churn(tmp_path: Path, mutate) -> Path:
    """Copy churn, apply ``mutate(documents)`` and return the new folder."""
    documents = copy.deepcopy(churn_documents())
    mutate(documents)
    target = tmp_path / "churn"
    if target.exists():
        shutil.rmtree(target)
    return write_usecase(target, documents)
