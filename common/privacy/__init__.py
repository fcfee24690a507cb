"""Privacy at ingestion: the per-column PII policies declared in metadata.

* :mod:`common.privacy.keys`: keys from ``LOOM_KEY_<NAME>`` (or ``..._FILE``),
  keyrings for rotation, :func:`require_keys` to fail fast at job start;
* :mod:`common.privacy.crypto`: pseudonyms, ciphertext tokens, audited :func:`decrypt`;
* :mod:`common.privacy.policies`: :func:`apply_policies` (DataFrame -> DataFrame,
  batch or streaming) and :func:`protected_type` (the bronze type of a column);
* :mod:`common.privacy.aggregate`: k-anonymous publication (the ``aggregate`` policy);

``loom forget``, ``loom audit-pii`` and ``loom privacy-report`` run over stored data, above
``models``: :mod:`common.privacy_lifecycle`. This package is below ``ingest``.
"""

from common.privacy.aggregate import KAnonymityReport, k_anonymize, published_counts
from common.privacy.crypto import DecryptError, decrypt, encrypt, pseudonym
from common.privacy.keys import Keyring, key_variable, load_keyring, require_keys
from common.privacy.policies import apply_policies, protected_columns, protected_type

__all__ = [
    "DecryptError",
    "KAnonymityReport",
    "Keyring",
    "apply_policies",
    "decrypt",
    "encrypt",
    "k_anonymize",
    "key_variable",
    "load_keyring",
    "protected_columns",
    "protected_type",
    "pseudonym",
    "published_counts",
    "require_keys",
]
