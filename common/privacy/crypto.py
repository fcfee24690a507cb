"""Pseudonyms, ciphertext tokens and audited decryption (plain Python, no Spark).

Token formats (ASCII, so they survive CSV, JSON, Delta and Redis keys unchanged):

* pseudonym: ``<kid>:<64 hex>``, the HMAC-SHA256 of the UTF-8 value under the key
  ``kid``. Equal values give equal pseudonyms for one key; a pseudonym cannot be
  reversed, only recomputed from a known value (:func:`pseudonym`).
* ciphertext: ``<kid>:siv:<payload>`` (deterministic, AES-SIV; payload = SIV tag +
  ciphertext) or ``<kid>:gcm:<payload>`` (randomized, AES-GCM; payload = 12-byte
  random nonce + ciphertext + tag). The payload is URL-safe base64 without
  padding. No associated data, so the same email encrypted in two sources gives
  the same deterministic token and the two can be joined.

The AES keys are derived from the configured key material with HKDF-SHA256, one
per algorithm (see :mod:`common.privacy.keys`). AES-GCM with random nonces is
safe for about 2^32 values per key: rotate long before that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.errors import ConfigError, DataError, LoomError
from common.privacy.keys import Keyring, key_id, load_keyring

Mode = Literal["deterministic", "randomized"]
Algorithm = Literal["siv", "gcm"]

ALGORITHM: dict[Mode, Algorithm] = {"deterministic": "siv", "randomized": "gcm"}
_KEY_BYTES: dict[Algorithm, int] = {"siv": 64, "gcm": 32}
_NONCE_BYTES = 12
_HMAC_BLOCK = 64  # SHA-256 block size

audit_log = logging.getLogger("loom.privacy.audit")


class DecryptError(DataError):
    """A token that cannot be decrypted: malformed, altered, or a missing audit reason."""


# --- pseudonyms ---------------------------------------------------------------------------------


def hmac_pads(material: bytes) -> tuple[bytes, bytes]:
    """``(K0 xor ipad, K0 xor opad)`` of RFC 2104 for HMAC-SHA256.

    With them HMAC(K, m) = SHA256(opad_key || SHA256(ipad_key || m)), which Spark
    SQL can compute with ``sha2`` and ``concat`` alone.
    """
    k0 = hashlib.sha256(material).digest() if len(material) > _HMAC_BLOCK else material
    k0 = k0.ljust(_HMAC_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in k0), bytes(b ^ 0x5C for b in k0)


def pseudonym(value: str, key_name: str, *, kid: str | None = None) -> str:
    """Pseudonym token of ``value`` under key ``key_name`` (its active key unless ``kid``).

    The same token that ingestion writes, so a service can look a person up by
    a value it is given (e.g. a phone number) without storing the value.
    """
    keyring = load_keyring(key_name, "hmac")
    kid = kid or keyring.active_id
    material = keyring.get(kid)
    if material is None:
        raise _unknown_kid(keyring, kid)
    return f"{kid}:{hmac.new(material, value.encode('utf-8'), hashlib.sha256).hexdigest()}"


def pseudonyms_under_every_key(value: str, key_name: str) -> list[str]:
    """The pseudonym of ``value`` under each key id of the keyring, active first.

    After a rotation, rows written before it carry the old key id's token:
    finding a person (``loom forget``) needs every one of them. A key that was
    a single un-named key before it joined the keyring wrote its hash id, so
    that id is included too.
    """
    keyring = load_keyring(key_name, "hmac")
    return [pseudonym(value, key_name, kid=kid) for kid in _all_ids(keyring)]


# --- encryption ---------------------------------------------------------------------------------


def subkey(material: bytes, algorithm: Algorithm) -> bytes:
    """The AES key for ``algorithm`` derived from configured key material (HKDF-SHA256)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES[algorithm], salt=None, info=b"loom/" + algorithm.encode())
    return hkdf.derive(material)


@dataclass(frozen=True)
class Sealer:
    """Encrypts values into tokens with one key; picklable, so Spark ships it to executors."""

    kid: str
    algorithm: Algorithm
    key: bytes = field(repr=False)

    def seal_many(self, values: Iterable[object]) -> list[str | None]:
        """Tokens for ``values``; None (and NaN, as pandas gives nulls) stays None."""
        if self.algorithm == "siv":
            siv = AESSIV(self.key)

            def seal(data: bytes) -> bytes:
                return siv.encrypt(data, None)
        else:
            gcm = AESGCM(self.key)

            def seal(data: bytes) -> bytes:
                nonce = os.urandom(_NONCE_BYTES)
                return nonce + gcm.encrypt(nonce, data, None)

        prefix = f"{self.kid}:{self.algorithm}:"
        return [
            prefix + _b64encode(seal(value.encode("utf-8"))) if isinstance(value, str) else None for value in values
        ]


def sealer(keyring: Keyring, mode: Mode) -> Sealer:
    """A :class:`Sealer` writing with the active key of ``keyring``."""
    algorithm = ALGORITHM[mode]
    return Sealer(kid=keyring.active_id, algorithm=algorithm, key=subkey(keyring.active, algorithm))


def encrypt(value: str, key_name: str, *, mode: Mode = "randomized") -> str:
    """Token of ``value`` encrypted with the active key of ``key_name`` (same format as ingestion)."""
    token = sealer(load_keyring(key_name, "encryption"), mode).seal_many([value])[0]
    if token is None:
        raise TypeError(f"encrypt needs a str, got {type(value).__name__}")
    return token


def deterministic_tokens(value: str, key_name: str) -> list[str]:
    """The AES-SIV token of ``value`` under each key id of the keyring, active first (see above)."""
    keyring = load_keyring(key_name, "encryption")
    tokens = []
    for kid in _all_ids(keyring):
        material = keyring.get(kid)
        token = Sealer(kid=kid, algorithm="siv", key=subkey(material, "siv")).seal_many([value])[0]
        if token is not None:
            tokens.append(token)
    return tokens


def _all_ids(keyring: Keyring) -> list[str]:
    """Every key id a token of ``keyring`` can carry: each entry's name and its hash id (see Keyring.get)."""
    ids = list(keyring.keys)
    ids += [key_id(material) for material in keyring.keys.values() if key_id(material) not in ids]
    return ids


def decrypt(token: str, key_name: str, *, reason: str, actor: str) -> str:
    """Decrypt a ciphertext token, writing an audit record to logger ``loom.privacy.audit``.

    The key is chosen by the key id in the token, so tokens written before a
    rotation still decrypt while their key stays in the keyring. The audit
    record names who (``actor``), why (``reason``), the key name and key id,
    and whether it succeeded; never the plaintext. Raises :class:`DecryptError`
    for a missing reason/actor or a malformed or altered token, and
    :class:`ConfigError` when the keyring does not hold the token's key id.
    """
    kid = token.partition(":")[0] if isinstance(token, str) else "?"
    details = {"actor": actor, "reason": reason, "key": key_name, "kid": kid}
    try:
        if not (isinstance(actor, str) and actor.strip() and isinstance(reason, str) and reason.strip()):
            raise DecryptError(
                "decrypt needs a non-empty actor (who) and reason (why) for the audit log. "
                "Fix: pass actor='<user or service>' and reason='<ticket or purpose>'"
            )
        plaintext = open_token(token, load_keyring(key_name, "encryption"))
    except LoomError as error:
        audit_log.warning(
            "decrypt refused: actor=%r reason=%r key=%s kid=%s error=%s",
            actor,
            reason,
            key_name,
            kid,
            type(error).__name__,
            extra={"audit": {**details, "outcome": "refused"}},
        )
        raise
    audit_log.info(
        "decrypt: actor=%r reason=%r key=%s kid=%s",
        actor,
        reason,
        key_name,
        kid,
        extra={"audit": {**details, "outcome": "ok"}},
    )
    return plaintext


def open_token(token: str, keyring: Keyring) -> str:
    """Plaintext of ``token`` (no audit: callers outside this module use :func:`decrypt`)."""
    parts = token.split(":", 2) if isinstance(token, str) else []
    if len(parts) != 3 or parts[1] not in _KEY_BYTES:
        raise DecryptError(
            f"not a Loom ciphertext token; expected '<kid>:siv:<base64url>' or '<kid>:gcm:<base64url>' "
            f"(key {keyring.name!r}). Fix: pass a value written by an 'encrypt' policy"
        )
    kid, algorithm, payload = parts
    material = keyring.get(kid)
    if material is None:
        raise _unknown_kid(keyring, kid)
    try:
        data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError) as error:
        raise DecryptError(
            f"the payload of a token with key id {kid!r} is not base64url. Fix: pass the whole token"
        ) from error
    key = subkey(material, algorithm)  # type: ignore[arg-type]
    try:
        if algorithm == "siv":
            plain = AESSIV(key).decrypt(data, None)
        else:
            plain = AESGCM(key).decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], None)
    except (InvalidTag, ValueError) as error:
        raise DecryptError(
            f"token with key id {kid!r} does not authenticate: it was altered or truncated, or "
            f"{keyring.variable} holds a different key under that id. Fix: pass the token as stored"
        ) from error
    return plain.decode("utf-8")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unknown_kid(keyring: Keyring, kid: str) -> ConfigError:
    return ConfigError(
        f"key id {kid!r} is not in {keyring.variable} (it holds {sorted(keyring.keys)}). "
        f"Fix: keep the retired key after the active one: {keyring.variable}={keyring.active_id}=<base64>,old=<old base64>"
    )
