"""Apply a source's per-column privacy policies to a DataFrame at ingestion.

:func:`apply_policies` is a pure DataFrame -> DataFrame function built only from
column expressions, a broadcast one-row join and a pandas UDF, so the same call
works on batch and streaming DataFrames. What each policy writes:

===========================  ==========  =============================================
policy                       type        value
===========================  ==========  =============================================
drop                         (removed)   the column is not in the output
pseudonymize                 string      ``<kid>:<hex HMAC-SHA256>`` of the value as a string
encrypt deterministic        string      ``<kid>:siv:<base64url>`` (AES-SIV)
encrypt randomized           string      ``<kid>:gcm:<base64url>`` (AES-GCM, random nonce)
generalize prefix            string      the first ``keep`` characters
generalize year              date        January 1st of the value's year
generalize bucket            double      ``floor(x / size) * size``
aggregate                    string      a prefix shared by >= k entities, else null
===========================  ==========  =============================================

``aggregate`` counts groups over the whole batch (:mod:`common.privacy.aggregate`),
so a DataFrame with such a column must be static (ingestion's ``foreachBatch``
batches are); the others are column expressions and work on streams too.

Nulls stay null. Columns of the DataFrame that the source does not declare, or
declares with ``pii: false``, pass through unchanged and keep their position.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import BinaryType, StructField, StructType

from common.errors import PrivacyError
from common.privacy.aggregate import KAnonymityReport, check_aggregate, k_anonymize
from common.privacy.crypto import Sealer, hmac_pads, sealer
from common.privacy.keys import Keyring, load_keyring
from common.spec.privacy import Aggregate, Drop, Encrypt, Generalize, Pseudonymize
from common.spec.sources import Column, Source

_POLICY_EXAMPLES = (
    "{method: drop}, {method: pseudonymize, key: pii_hmac}, {method: encrypt, key: pii_encryption}, "
    "{method: generalize, rule: prefix|year|bucket, ...} or {method: aggregate, k: 10, keep: [3, 2]}"
)
_DATES = ("date", "timestamp")
_NUMBERS = ("int", "long", "double")


def protected_type(column: Column, *, where: str = "column") -> str | None:
    """Spark SQL type of ``column`` after its policy; None when the policy drops it.

    ``where`` (e.g. ``sources.customers.columns.zip``) only names the column in
    errors. Raises :class:`PrivacyError` for PII without a policy and for a
    generalize rule that does not fit the column's type.
    """
    if column.pii is True:
        raise _unprotected(where)
    policy = column.policy
    if policy is None:
        return column.type
    if isinstance(policy, Drop):
        return None
    if isinstance(policy, (Pseudonymize, Encrypt)):
        return "string"
    if isinstance(policy, Aggregate):
        if column.type != "string":
            raise PrivacyError(
                "the aggregate policy publishes prefixes of a string column",
                path=f"{where}.pii",
                value=column.type,
                fix="declare the column as type string, or use {method: generalize, rule: bucket|year}",
            )
        return "string"
    if policy.rule == "prefix":
        return "string"
    if policy.rule == "year":
        if column.type not in _DATES:
            raise PrivacyError(
                "generalize rule 'year' needs a date or timestamp column",
                path=f"{where}.pii.rule",
                value=column.type,
                fix="declare the column as type date or timestamp, or use rule prefix or bucket",
            )
        return "date"
    if column.type not in _NUMBERS:
        raise PrivacyError(
            "generalize rule 'bucket' needs a numeric column (int, long or double)",
            path=f"{where}.pii.rule",
            value=column.type,
            fix="declare the column as a number, or use rule prefix",
        )
    return "double"


def protected_columns(source: Source, source_name: str) -> dict[str, str]:
    """Bronze schema of ``source``: declared column -> Spark SQL type after policies (dropped ones left out)."""
    for name, column in source.columns.items():
        if isinstance(column.policy, Aggregate):
            check_aggregate(source, source_name, name, column.policy)
    types = {
        name: protected_type(column, where=f"sources.{source_name}.columns.{name}")
        for name, column in source.columns.items()
    }
    return {name: kind for name, kind in types.items() if kind is not None}


def apply_policies(
    df: DataFrame, source: Source, source_name: str, *, reports: list[KAnonymityReport] | None = None
) -> DataFrame:
    """Protect every PII column of ``df`` as ``source`` declares; batch or streaming alike.

    Columns are matched case-insensitively, as Spark resolves them. Keys are read
    once, here, on the driver; a missing or invalid key raises ConfigError. A
    column marked ``pii: true`` (PII without a policy) raises PrivacyError:
    raw PII never passes through. ``aggregate`` columns are decided here, with
    Spark jobs over ``df`` (static DataFrames only); their
    :class:`~common.privacy.aggregate.KAnonymityReport` is logged and, when
    ``reports`` is given, appended to it.
    """
    bare = sorted(name for name, column in source.columns.items() if column.pii is True)
    if bare:
        raise _unprotected(f"sources.{source_name}.columns.{bare[0]}", names=bare)
    protected_columns(source, source_name)  # rule/type mismatches fail here, before any data moves

    declared = {name.lower(): (name, column) for name, column in source.columns.items()}
    present = [(field, *declared[field.lower()]) for field in df.columns if field.lower() in declared]

    hmac_keys = sorted({c.policy.key for _, _, c in present if isinstance(c.policy, Pseudonymize)})
    hmac_rings = {name: load_keyring(name, "hmac") for name in hmac_keys}
    pads = {name: (f"__loom_hmac_{name}_inner", f"__loom_hmac_{name}_outer") for name in hmac_rings}
    if hmac_rings:
        df = df.crossJoin(F.broadcast(_pad_frame(df, hmac_rings, pads)))
    sealers: dict[tuple[str, str], Sealer] = {}

    protected: dict[str, SparkColumn | None] = {}
    for field, _, column in present:
        policy = column.policy
        value = F.col(_quote(field))
        if policy is None:
            continue
        if isinstance(policy, Drop):
            protected[field] = None
        elif isinstance(policy, Pseudonymize):
            protected[field] = _pseudonymize(value, hmac_rings[policy.key].active_id, pads[policy.key])
        elif isinstance(policy, Encrypt):
            cache_key = (policy.key, policy.mode)
            if cache_key not in sealers:
                sealers[cache_key] = sealer(load_keyring(policy.key, "encryption"), policy.mode)
            protected[field] = _encrypt(value, sealers[cache_key])
        elif isinstance(policy, Aggregate):
            continue  # decided below, over the whole batch
        else:
            protected[field] = _generalize(value, policy)

    output = []
    for field in df.columns:
        if field in protected:
            if protected[field] is not None:
                output.append(protected[field].alias(field))
        elif not _is_pad(field, pads):
            output.append(F.col(_quote(field)))
    out = df.select(*output)
    # k-anonymity last: it counts entities by the source's id, which the other policies leave as is
    for field, name, column in present:
        if isinstance(column.policy, Aggregate):
            id_column = check_aggregate(source, source_name, name, column.policy)
            id_field = next((f for f in out.columns if f.lower() == id_column.lower()), None)
            if id_field is None:
                raise PrivacyError(
                    f"the aggregate policy of {name!r} counts entities by {id_column!r}, which is not in the data",
                    path=f"sources.{source_name}.columns.{name}.pii",
                    value=column.policy.method,
                    fix=f"keep the id column {id_column!r} in the records",
                )
            out, report = k_anonymize(
                out, field, id_field, column.policy, where=f"sources.{source_name}.columns.{name}"
            )
            if reports is not None:
                reports.append(report)
    return out


def _pseudonymize(value: SparkColumn, kid: str, pad_columns: tuple[str, str]) -> SparkColumn:
    # RFC 2104 HMAC from sha2 and concat: no Python round trip. The padded key
    # arrives through a broadcast one-row join, not as a literal, so it never
    # shows in query plans, the Spark UI or error messages.
    inner_pad, outer_pad = (F.col(name) for name in pad_columns)
    data = value.cast("string").cast("binary")
    inner = F.unhex(F.sha2(F.concat(inner_pad, data), 256))
    return F.concat(F.lit(f"{kid}:"), F.sha2(F.concat(outer_pad, inner), 256))


def _encrypt(value: SparkColumn, with_sealer: Sealer) -> SparkColumn:
    def encrypt_values(values: pd.Series) -> pd.Series:
        return pd.Series(with_sealer.seal_many(values), index=values.index, dtype=object)

    encrypt_values.__name__ = f"loom_encrypt_{with_sealer.algorithm}"
    return pandas_udf(encrypt_values, "string")(value.cast("string"))


def _generalize(value: SparkColumn, policy: Generalize) -> SparkColumn:
    if policy.rule == "prefix":
        return F.substring(value.cast("string"), 1, policy.keep)
    if policy.rule == "year":
        return F.trunc(value.cast("date"), "year")
    size = F.lit(float(policy.size)).cast("double")
    return (F.floor(value.cast("double") / size) * size).cast("double")


def _is_pad(field: str, pads: Mapping[str, tuple[str, str]]) -> bool:
    return any(field in names for names in pads.values())


def _pad_frame(df: DataFrame, rings: Mapping[str, Keyring], pads: Mapping[str, tuple[str, str]]) -> DataFrame:
    row: list[bytearray] = []
    fields: list[StructField] = []
    for name, ring in rings.items():
        inner, outer = hmac_pads(ring.active)
        row += [bytearray(inner), bytearray(outer)]
        fields += [StructField(column, BinaryType(), False) for column in pads[name]]
    return df.sparkSession.createDataFrame([tuple(row)], StructType(fields))


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _unprotected(where: str, names: list[str] | None = None) -> PrivacyError:
    columns = f"columns {names} are" if names and len(names) > 1 else "column is"
    return PrivacyError(
        f"{columns} marked PII (pii: true) without a policy, so raw values would be stored",
        path=f"{where}.pii",
        value=True,
        fix=f"replace 'pii: true' with a policy such as {_POLICY_EXAMPLES}, or set pii: false if it is not personal data",
    )
