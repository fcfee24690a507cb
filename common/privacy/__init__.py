"""Privacy at ingestion: the per-column PII policies declared in metadata.

* :mod:`common.privacy.keys`: keys from ``LOOM_KEY_<NAME>`` (or ``..._FILE``),
  keyrings for rotation, :func:`require_keys` to fail fast at job start;
* :mod:`common.privacy.crypto`: pseudonyms, ciphertext tokens, audited :func:`decrypt`;
* :mod:`common.privacy.policies`: :func:`apply_policies` (DataFrame -> DataFrame,
  batch or streaming) and :func:`protected_type` (the bronze type of a column).
"""

from common.privacy.crypto import DecryptError, decrypt, encrypt, pseudonym
from common.privacy.keys import Keyring, key_variable, load_keyring, require_keys
from common.privacy.policies import apply_policies, protected_columns, protected_type

__all__ = [
    "DecryptError",
    "Keyring",
    "apply_policies",
    "decrypt",
    "encrypt",
    "key_variable",
    "load_keyring",
    "protected_columns",
    "protected_type",
    "pseudonym",
    "require_keys",
]
