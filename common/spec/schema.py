"""JSON Schema of the metadata, generated from the spec models.

``metadata/schema.json`` is committed so editors can validate YAML; a test
fails when it is stale. Regenerate with ``loom schema --write``.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.settings import PROJECT_ROOT
from common.spec.usecase import UseCase

SCHEMA_PATH = PROJECT_ROOT / "metadata" / "schema.json"


def schema_text() -> str:
    """The JSON Schema of :class:`UseCase`, as stable, pretty-printed text."""
    schema = UseCase.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Loom use case"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    path.write_text(schema_text())
    return path


def is_stale(path: Path = SCHEMA_PATH) -> bool:
    return not path.is_file() or path.read_text() != schema_text()
