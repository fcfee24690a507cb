"""Keys named in metadata, read from the environment and rotatable.

A key named ``pii_hmac`` comes from ``$LOOM_KEY_PII_HMAC`` or from the file at
``$LOOM_KEY_PII_HMAC_FILE`` (see :func:`common.runtime.secrets.read_secret`). Its value is
one of, tried in this order:

1. **one key**: standard base64 (``+/``, padded) of the raw key bytes, e.g. from
   ``openssl rand -base64 32``. Its key id is the first 8 hex characters of
   ``sha256(key bytes)``.
2. **a keyring**: ``kid1=<base64>,kid2=<base64>``. The FIRST entry is the active
   key: every new token is written with it. All entries can read (decrypt), so a
   key rotates by putting the new key first and keeping the old one after it
   until no token written with it is left. An entry also answers to its hash id,
   so a single key that joins a keyring under a name keeps reading the tokens
   written with its hash id. Key ids are 1-32 characters of
   ``A-Z a-z 0-9 _ . -`` (never ``:``, which separates the id inside a token).
3. **raw text** (HMAC keys only): a value that is neither of the above is used as
   its UTF-8 bytes, so a long passphrase works as an HMAC key. A value that
   happens to be valid base64 is always decoded (rule 1), and one that looks
   like a keyring (``word=base64,...``) is read as one (rule 2). Encryption keys
   must be base64: raw text is too easily low-entropy.

Sizes: an HMAC key needs at least 16 bytes. An encryption key needs at least 32
bytes of key material; the AES keys are derived from it with HKDF-SHA256, one
per algorithm (64 bytes for AES-SIV, 32 for AES-GCM), so one secret can serve
both modes without reusing the same AES key for two algorithms.

Errors name the variable and the fix, never the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from common.errors import ConfigError
from common.runtime.secrets import read_secret
from common.spec.privacy import Encrypt, Pseudonymize
from common.spec.sources import Source

Purpose = Literal["hmac", "encryption"]
"""What a key is used for: pseudonymization (HMAC) or encryption (AES)."""

MIN_BYTES: dict[Purpose, int] = {"hmac": 16, "encryption": 32}
_KID = r"[A-Za-z0-9_.\-]{1,32}"
_B64 = r"[A-Za-z0-9+/]+={0,2}"
_KEYRING = re.compile(rf"^\s*{_KID}\s*=\s*{_B64}\s*(,\s*{_KID}\s*=\s*{_B64}\s*)*$")
_GENERATE = "openssl rand -base64 32"


def key_variable(name: str) -> str:
    """Environment variable that holds key ``name``: ``pii_hmac`` -> ``LOOM_KEY_PII_HMAC``."""
    return f"LOOM_KEY_{name.upper()}"


def key_id(material: bytes) -> str:
    """Id of an un-named key: the first 8 hex characters of its SHA-256."""
    return hashlib.sha256(material).hexdigest()[:8]


@dataclass(frozen=True)
class Keyring:
    """The keys behind one key name; the first is active (writes), all can read."""

    name: str
    variable: str
    keys: Mapping[str, bytes] = field(repr=False)

    @property
    def active_id(self) -> str:
        """Key id that new tokens carry."""
        return next(iter(self.keys))

    @property
    def active(self) -> bytes:
        """Key material that new tokens are written with."""
        return self.keys[self.active_id]

    def get(self, kid: str) -> bytes | None:
        """Key material for ``kid``, or None when the keyring does not hold it.

        A key also answers to its hash id (:func:`key_id`), so tokens written
        while it was a single un-named key still read after it joins a keyring
        under a name.
        """
        if kid in self.keys:
            return self.keys[kid]
        return next((material for material in self.keys.values() if key_id(material) == kid), None)


def _strict_b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _fix(variable: str, purpose: Purpose) -> str:
    return (
        f"export {variable}=<base64 of at least {MIN_BYTES[purpose]} random bytes> "
        f"(e.g. `{_GENERATE}`) or {variable}_FILE=/path/to/a/file/holding/it; "
        f"to rotate, put the new key first: {variable}=new=<base64>,old=<old base64>"
    )


def parse_keyring(value: str, *, name: str, purpose: Purpose) -> Keyring:
    """Parse a key value (one key, a keyring or raw text) and check its sizes.

    Raises :class:`ConfigError` naming ``LOOM_KEY_<NAME>`` and the fix; the value
    itself never appears in the message.
    """
    variable = key_variable(name)
    text = value.strip()
    keys: dict[str, bytes] = {}
    single = _strict_b64(text)
    if single is not None:
        keys[key_id(single)] = single
    elif _KEYRING.match(text):
        for entry in text.split(","):
            kid, _, encoded = (part.strip() for part in entry.partition("="))
            material = _strict_b64(encoded)
            if material is None:
                raise ConfigError(
                    f"{variable}: keyring entry {kid!r} is not valid base64. Fix: {_fix(variable, purpose)}"
                )
            if kid in keys:
                raise ConfigError(
                    f"{variable}: key id {kid!r} appears twice in the keyring. Fix: give each key its own id"
                )
            keys[kid] = material
    elif purpose == "hmac":
        raw = text.encode("utf-8")
        keys[key_id(raw)] = raw
    else:
        raise ConfigError(
            f"{variable} is not base64 nor a keyring 'kid=<base64>,...'; encryption keys must be base64. "
            f"Fix: {_fix(variable, purpose)}"
        )
    for kid, material in keys.items():
        if len(material) < MIN_BYTES[purpose]:
            raise ConfigError(
                f"{variable}: key {kid!r} has {len(material)} bytes; a key used for {purpose} needs at least "
                f"{MIN_BYTES[purpose]}. Fix: {_fix(variable, purpose)}"
            )
    return Keyring(name=name, variable=variable, keys=keys)


def load_keyring(name: str, purpose: Purpose) -> Keyring:
    """Read and validate key ``name`` from ``$LOOM_KEY_<NAME>`` or ``$LOOM_KEY_<NAME>_FILE``."""
    variable = key_variable(name)
    value = read_secret(variable, required=False)
    if value is None:
        raise ConfigError(f"key {name!r} is not set. Fix: {_fix(variable, purpose)}")
    return parse_keyring(value, name=name, purpose=purpose)


def key_uses(sources: Mapping[str, Source]) -> Iterator[tuple[str, Purpose, str]]:
    """Every (key name, purpose, ``sources.<s>.columns.<c>``) that the policies of ``sources`` name."""
    for source_name, source in sources.items():
        for column_name, column in source.columns.items():
            policy = column.policy
            where = f"sources.{source_name}.columns.{column_name}"
            if isinstance(policy, Pseudonymize):
                yield policy.key, "hmac", where
            elif isinstance(policy, Encrypt):
                yield policy.key, "encryption", where


def require_keys(sources: Mapping[str, Source]) -> None:
    """Check at job start that every key named by a policy is set and valid.

    ``sources`` is ``usecase.sources`` (or any subset). All problems are reported
    together in one :class:`ConfigError`: which key, which columns use it, which
    variable to set.
    """
    users: dict[tuple[str, Purpose], list[str]] = {}
    for name, purpose, where in key_uses(sources):
        users.setdefault((name, purpose), []).append(where)
    problems: list[str] = []
    for (name, purpose), wheres in users.items():
        variable = key_variable(name)
        used_by = f"key {name!r} (used for {purpose} by {', '.join(wheres)})"
        try:
            value = read_secret(variable, required=False)
            if value is None:
                problems.append(f"{used_by} is not set. Fix: {_fix(variable, purpose)}")
            else:
                parse_keyring(value, name=name, purpose=purpose)
        except ConfigError as error:
            problems.append(f"{used_by}: {error}")
    if problems:
        raise ConfigError("\n".join(problems))
