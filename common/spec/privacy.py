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


class Aggregate(Strict):
    """Publish a quasi-identifier only for groups of at least ``k`` entities (k-anonymity of the column).

    For a string column of a ``kind: table`` source with an ``id``. Values are
    grouped by their first ``keep[0]`` characters (the whole value when ``keep``
    is empty) and a group is published when at least ``k`` distinct ids share
    it. The rest is merged into the coarser prefix ``keep[1]``, again only for
    groups of at least ``k`` of the ids still unpublished, and so on; what is
    left is suppressed (null). Every published value is therefore shared by at
    least ``k`` entities, so no aggregate over the column has a cell with a
    count from 1 to k-1. Ingestion counts within each batch and logs how many
    values it merged and suppressed (:mod:`common.privacy.aggregate`).
    """

    method: Literal["aggregate"]
    k: int = Field(ge=2, description="smallest number of distinct entities a published value may describe")
    keep: list[int] = Field(
        default_factory=list,
        description="prefix lengths tried in order, finest first (e.g. [3, 2] for zip: zip3, then zip2); "
        "empty: the whole value or nothing",
    )

    @model_validator(mode="after")
    def _coarser_levels(self) -> Aggregate:
        if any(length < 1 for length in self.keep):
            raise ValueError("every 'keep' length must be at least 1, e.g. keep: [3, 2]")
        if any(finer <= coarser for finer, coarser in zip(self.keep, self.keep[1:], strict=False)):
            raise ValueError("'keep' must list strictly shorter prefixes, finest first, e.g. keep: [3, 2]")
        return self


Policy = Annotated[Union[Drop, Pseudonymize, Encrypt, Generalize, Aggregate], Field(discriminator="method")]
"""One privacy policy; ``method`` selects which."""
