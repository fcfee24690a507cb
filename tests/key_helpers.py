"""Privacy keys for tests: base64 material and LOOM_KEY_<NAME> set through monkeypatch."""

from __future__ import annotations

import base64


def b64(material: bytes) -> str:
    """``material`` as the base64 text a key variable holds."""
    return base64.b64encode(material).decode()


def set_key(monkeypatch, name: str, value: str) -> None:
    """Set key ``name`` from the environment, and make sure no key file shadows it."""
    variable = f"LOOM_KEY_{name.upper()}"
    monkeypatch.setenv(variable, value)
    monkeypatch.delenv(f"{variable}_FILE", raising=False)
