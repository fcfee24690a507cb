"""Keep raw PII out of the quarantine table.

A quarantined record is stored as text so an engineer can see what was wrong
with it. For a source with PII columns that text is redacted first:

* JSON that parses as an object: re-serialized with the value of every PII key
  replaced by ``"<redacted>"`` (unknown keys are kept; all values become strings);
* JSON that does not parse: every ``"<pii key>": <value>`` pair found by a regular
  expression gets its value replaced, including a value cut off by the end of
  the line; the rest of the text is kept;
* CSV or Parquet rows: the record as a JSON object of its fields, PII fields replaced;
* a CSV line that cannot be split into the declared fields: replaced entirely by
  a note, because which token is PII is unknown (the file name is kept next to it).

Sources without PII columns keep their raw text unchanged.
"""

from __future__ import annotations

import re

from pyspark.sql import Column
from pyspark.sql import functions as F

from common.spec.sources import Source

REDACTED = "<redacted>"
UNPARSABLE_CSV_NOTE = "<redacted: malformed CSV record of a source with PII columns; see source_file>"


def pii_columns(source: Source) -> list[str]:
    """Names of the source's PII columns, in declaration order."""
    return [name for name, column in source.columns.items() if column.is_pii]


def pii_pairs_pattern(keys: list[str]) -> str:
    """Java regex matching ``"key" : value`` for the given keys; group 1 is ``"key" :``.

    The value is a JSON string (possibly unterminated at the end of the line) or
    a bare token (number, literal) up to the next separator.
    """
    names = "|".join(re.escape(key) for key in keys)
    return r'(?i)("(?:' + names + r')"\s*:\s*)(?:"(?:[^"\\]|\\.)*(?:"|$)|[^,}\]\s]+)'


def redact_json_text(text: Column, keys: list[str]) -> Column:
    """Redact the PII values of a JSON line (valid or not); see the module docstring."""
    as_map = F.from_json(text, "map<string,string>")
    lowered = {key.lower() for key in keys}
    redacted_map = F.transform_values(
        as_map,
        lambda key, value: F.when(F.lower(key).isin(sorted(lowered)), F.lit(REDACTED)).otherwise(value),
    )
    by_pattern = F.regexp_replace(text, pii_pairs_pattern(keys), f'$1"{REDACTED}"')
    return F.when(as_map.isNotNull(), F.to_json(redacted_map)).otherwise(by_pattern)


def record_as_json(fields: dict[str, Column], pii: list[str]) -> Column:
    """The record as a JSON object of its (string) fields, PII values replaced."""
    shown = [
        (F.when(value.isNotNull(), F.lit(REDACTED)) if name in pii else value).alias(name)
        for name, value in fields.items()
    ]
    return F.to_json(F.struct(*shown))
