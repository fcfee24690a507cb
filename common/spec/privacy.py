"""Privacy policies for PII columns, declared on the column (``pii:``).

``pii: true`` marks a PII column without a policy yet: valid to load, refused
by the compiler. Otherwise ``pii`` is one policy, chosen by ``method``.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from common.spec.base import Name, Strict


class Drop(Strict):
    """Remove the column at ingestion."""

    method: Literal["drop"]


class Pseudonymize(Strict):
    """Keyed HMAC-SHA256 token: equal inputs give equal tokens, so joins work."""

    method: Literal["pseudonymize"]
    key: Name = Field(description="Key name; its value comes from LOOM_KEY_<NAME> or LOOM_KEY_<NAME>_FILE")


class Encrypt(Strict):
    """Encryption with the cryptography library.

    ``deterministic`` is AES-SIV (equality and joins keep working);
    ``randomized`` is AES-GCM with a random nonce.
    """

    method: Literal["encrypt"]
    mode: Literal["deterministic", "randomized"] = "randomized"
    key: Name = Field(description="Key name; its value comes from LOOM_KEY_<NAME> or LOOM_KEY_<NAME>_FILE")


class Generalize(Strict):
    """Coarsen a value so it no longer singles a person out.

    * ``prefix``: keep the first ``keep`` characters (zip 94107 -> 941);
    * ``year``: a date becomes its year;
    * ``bucket``: a number becomes the lower edge of its ``size``-wide bucket.
    """

    method: Literal["generalize"]
    rule: Literal["prefix", "year", "bucket"]
    keep: int | None = Field(default=None, ge=1, description="characters kept by rule 'prefix'")
    size: float | None = Field(default=None, gt=0, description="bucket width for rule 'bucket'")

    @model_validator(mode="after")
    def _rule_arguments(self) -> Generalize:
        if self.rule == "prefix" and self.keep is None:
            raise ValueError("rule 'prefix' needs 'keep' (how many leading characters to keep), e.g. keep: 3")
        if self.rule == "bucket" and self.size is None:
            raise ValueError("rule 'bucket' needs 'size' (the bucket width), e.g. size: 10")
        return self


Policy = Annotated[Union[Drop, Pseudonymize, Encrypt, Generalize], Field(discriminator="method")]
"""One privacy policy; ``method`` selects which."""
