"""The Avro schema files of ``format: kafka`` sources with ``value_format: avro``, checked when metadata loads.

A schema file is named relative to the metadata file that declares the source (or absolutely). The loader
resolves it, reads it and checks it once, so that a missing or broken file stops ``loom validate`` and every
job before Spark starts, with the file, the field and the fix:

* the file exists and is an Avro schema (parsed by fastavro, the library the producer writes with);
* it is a record;
* each required column of the source is a field of the record (else every message would be quarantined),
  and so is the event time when it comes from the value.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.errors import shorten
from common.spec.references import Problem
from common.spec.usecase import UseCase


def read_avro_schema(path: Path) -> dict:
    """The parsed (JSON) Avro schema of ``path``; ValueError with the reason when it is not one."""
    from fastavro.schema import parse_schema

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot be read ({err.strerror or err})") from None
    try:
        document = json.loads(text)
    except ValueError as err:
        raise ValueError(f"is not JSON ({err})") from None
    try:
        parse_schema(document)
    except Exception as err:  # fastavro raises SchemaParseException, KeyError, TypeError... for bad schemas
        raise ValueError(f"is not an Avro schema ({type(err).__name__}: {shorten(str(err), 160)})") from None
    if not isinstance(document, dict) or document.get("type") != "record":
        raise ValueError('is an Avro schema, but not of a record (write {"type": "record", "fields": [...]})')
    return document


def check_avro_schemas(spec: UseCase) -> list[Problem]:
    """Resolve (relative to the declaring metadata file) and check every Avro schema file of ``spec``'s sources;
    the resolved paths are kept on the sources' Kafka settings."""
    problems: list[Problem] = []
    for name, source in spec.sources.items():
        settings = source.kafka
        if settings is None or settings.value_format != "avro" or settings.avro_schema is None:
            continue
        where = ("sources", name, "kafka", "avro_schema")
        declared = spec.file_of("sources", name)
        base = Path(declared).parent if declared else Path.cwd()
        path = (base / settings.avro_schema).expanduser().resolve()
        if not path.is_file():
            problems.append(
                Problem(
                    where,
                    f"the Avro schema file {path} does not exist",
                    settings.avro_schema,
                    f"write the path of the .avsc file, relative to {base} or absolute",
                )
            )
            continue
        try:
            document = read_avro_schema(path)
        except ValueError as err:
            problems.append(Problem(where, f"{path} {err}", settings.avro_schema, "give the file of a record schema"))
            continue
        settings._avro_schema_file = path
        fields = {field.get("name") for field in document.get("fields", []) if isinstance(field, dict)}
        needed = [column for column, spec_column in source.columns.items() if spec_column.required]
        if source.event_time is not None and not source.event_time_from_kafka:
            needed.append(source.event_time)
        absent = [column for column in dict.fromkeys(needed) if column not in fields]
        if absent:
            problems.append(
                Problem(
                    where,
                    f"the Avro record of {path.name} has no field {absent[0]!r}, a required column of the source: "
                    "every message would be quarantined",
                    settings.avro_schema,
                    f"add the field(s) {absent} to the schema, or name the schema the producer writes with",
                )
            )
    return problems
