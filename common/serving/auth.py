"""API keys of the prediction service.

Keys come from ``LOOM_API_KEYS`` or from the file named by ``LOOM_API_KEYS_FILE``
(:func:`common.runtime.secrets.read_secret`), never from code or metadata. One entry per
line (or separated by ``;``); ``#`` starts a comment line::

    care-screen:3f9c1e0b8d7a6c5b4e3f2a1b:churn       # this key may call churn only
    web:7b6a5c4d3e2f1a0b9c8d7e6f:churn,upsell        # churn and upsell
    ops:0a1b2c3d4e5f6a7b8c9d0e1f                     # every model (same as :*)

``name`` identifies the client in logs and metrics, the key is the secret (at
least 16 characters, no ``:``, ``;`` or spaces). A request sends it as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

Only SHA-256 digests of the keys are kept. A presented key is hashed and
compared with every stored digest by :func:`hmac.compare_digest`, without
stopping at the first match, so the time taken does not depend on which key
(or how much of one) matched. Error messages name the entry's position and
client name, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from common.errors import ConfigError
from common.runtime.secrets import read_secret

ENV = "LOOM_API_KEYS"
ALL_MODELS = "*"
MIN_KEY_LENGTH = 16
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_KEY = re.compile(r"^[^\s:;]+$")


@dataclass(frozen=True)
class Client:
    """Who called: the key's name and the models it may call (``None`` = all)."""

    name: str
    models: frozenset[str] | None

    def allows(self, model: str) -> bool:
        """May this client call ``model``?"""
        return self.models is None or model in self.models


@dataclass(frozen=True)
class _Entry:
    digest: bytes = b""
    client: Client | None = None

    def __repr__(self) -> str:  # never show even the digest
        return f"_Entry({self.client!r})"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    """The configured keys; :meth:`authenticate` maps a presented key to its client."""

    def __init__(self, entries: list[_Entry]) -> None:
        if not entries:
            raise ConfigError(f"no API key is configured. Fix: set {ENV} or {ENV}_FILE (format: name:key[:models])")
        self._entries = tuple(entries)

    @classmethod
    def parse(cls, text: str, source: str = ENV) -> ApiKeys:
        """Keys from the ``name:key[:model,model|*]`` format of the module docstring."""
        entries: list[_Entry] = []
        names: set[str] = set()
        digests: set[bytes] = set()
        lines = [part.strip() for line in text.splitlines() for part in line.split(";")]
        for position, line in enumerate((line for line in lines if line and not line.startswith("#")), start=1):
            parts = line.split(":")
            where = f"{source}, entry {position}"
            if len(parts) not in (2, 3):
                raise ConfigError(
                    f"{where} is not name:key or name:key:models. Fix: write e.g. care-screen:<key>:churn"
                )
            name, key = parts[0].strip(), parts[1].strip()
            if not _NAME.match(name):
                raise ConfigError(f"{where}: client name {name!r} must be letters, digits, '_', '.' or '-'")
            if name in names:
                raise ConfigError(f"{where}: client name {name!r} is used twice. Fix: give each key its own name")
            if len(key) < MIN_KEY_LENGTH or not _KEY.match(key):
                raise ConfigError(
                    f"{where} (client {name!r}): the key must have at least {MIN_KEY_LENGTH} characters and no "
                    "spaces, ':' or ';'. Fix: generate one, e.g. `python -c 'import secrets; print(secrets.token_hex(24))'`"
                )
            digest = _digest(key)
            if digest in digests:
                raise ConfigError(f"{where} (client {name!r}): this key is already given to another client")
            models = _models(parts[2] if len(parts) == 3 else ALL_MODELS, where)
            names.add(name)
            digests.add(digest)
            entries.append(_Entry(digest, Client(name, models)))
        return cls(entries)

    @classmethod
    def from_env(cls) -> ApiKeys:
        """Keys from ``LOOM_API_KEYS`` or the file at ``LOOM_API_KEYS_FILE``."""
        text = read_secret(ENV, required=False)
        if text is None:
            raise ConfigError(f"no API key is configured. Fix: set {ENV} or {ENV}_FILE (format: name:key[:models])")
        return cls.parse(text)

    def authenticate(self, presented: str | None) -> Client | None:
        """The client whose key is ``presented``, or None. Constant time in which key matched."""
        if not presented:
            return None
        digest = _digest(presented)
        found: Client | None = None
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.digest):
                found = entry.client
        return found

    @property
    def clients(self) -> list[Client]:
        return [entry.client for entry in self._entries if entry.client is not None]

    def __repr__(self) -> str:
        return f"ApiKeys({[c.name for c in self.clients]})"


def _models(text: str, where: str) -> frozenset[str] | None:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ConfigError(f"{where}: the model list is empty. Fix: list models (churn,upsell) or write *")
    if ALL_MODELS in names:
        return None
    return frozenset(names)
