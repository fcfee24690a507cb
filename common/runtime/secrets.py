"""Secrets come from the environment or from files, never from code or metadata.

For a secret named ``NAME``: the variable ``NAME`` holds the value, or
``NAME_FILE`` holds the path of a file whose content (stripped) is the value.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import ConfigError


def read_secret(name: str, *, required: bool = True) -> str | None:
    """Value of the secret ``name`` from ``$NAME`` or the file at ``$NAME_FILE``."""
    value = os.environ.get(name)
    if value:
        return value
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        path = Path(file_name)
        if not path.is_file():
            raise ConfigError(
                f"{name}_FILE points to {path}, which does not exist. Fix: create it or unset {name}_FILE"
            )
        return path.read_text().strip()
    if required:
        raise ConfigError(f"secret {name} is not set. Fix: export {name}=... or {name}_FILE=/path/to/file")
    return None
