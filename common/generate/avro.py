"""Generated JSON records as Avro values, for the Kafka sources with ``value_format: avro``.

The generator writes JSON lines; a producer of Avro sends each record in Avro's binary encoding, with the
source's schema (fastavro; no container header, no schema registry prefix: what ``from_avro`` reads). A JSON
value is taken for an Avro field only when the field's type is the value's own: text for a string, a number
for a double (an integer for an int or a long), true or false for a boolean, ISO-8601 text for a timestamp or
date logical type. Anything else cannot be written with the schema: :meth:`AvroEncoder.encode` returns None, and
the producer sends such a record as its JSON text, what an upstream system with the wrong serializer would send
(ingestion quarantines it as malformed Avro).
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

TIMESTAMPS = {"timestamp-millis", "timestamp-micros", "local-timestamp-millis", "local-timestamp-micros"}


class NotEncodable(ValueError):
    """A JSON value that the Avro field's type does not take."""


def _timestamp(value: Any, logical: str) -> datetime:
    if not isinstance(value, str):
        raise NotEncodable(f"{value!r} is not ISO-8601 text")
    try:
        stamp = datetime.fromisoformat(value.strip())
    except ValueError:
        raise NotEncodable(f"{value!r} is not ISO-8601 text") from None
    if logical.startswith("local-"):
        return stamp.replace(tzinfo=None)
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)  # no offset: UTC, Loom's session zone


def avro_value(value: Any, schema: Any) -> Any:
    """``value`` (from JSON) as the Python value fastavro writes for the Avro type ``schema``."""
    if isinstance(schema, list):  # a union: the first branch that takes the value
        for branch in schema:
            try:
                return avro_value(value, branch)
            except NotEncodable:
                continue
        raise NotEncodable(f"{value!r} fits no branch of {schema}")
    kind = schema.get("type") if isinstance(schema, dict) else schema
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    if kind == "null":
        if value is None:
            return None
    elif value is None:
        pass
    elif logical in TIMESTAMPS and kind == "long":
        return _timestamp(value, logical)
    elif logical == "date" and kind == "int":
        if isinstance(value, str):
            try:
                return date.fromisoformat(value.strip())
            except ValueError:
                pass
    elif kind in ("string", "enum"):
        if isinstance(value, str):
            return value
    elif kind in ("double", "float"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind in ("int", "long"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "boolean" and isinstance(value, bool):
        return value
    raise NotEncodable(f"{value!r} is not a {logical or kind}")


class AvroEncoder:
    """Encodes JSON records with one record schema (an ``.avsc`` file)."""

    def __init__(self, schema_file: Path) -> None:
        from fastavro import parse_schema

        self.document = json.loads(schema_file.read_text(encoding="utf-8"))
        self.schema = parse_schema(self.document)
        self.fields = [(field["name"], field["type"]) for field in self.document["fields"]]

    def encode(self, line: str) -> bytes | None:
        """The Avro encoding of the JSON record ``line``, or None when the schema cannot hold it."""
        from fastavro import schemaless_writer

        try:
            record = json.loads(line)
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        try:
            values = {name: avro_value(record.get(name), kind) for name, kind in self.fields}
        except NotEncodable:
            return None
        buffer = io.BytesIO()
        try:
            schemaless_writer(buffer, self.schema, values)
        except (ValueError, TypeError, OverflowError):
            return None
        return buffer.getvalue()
