"""Raw landing records, read in memory for the audit and the efficacy report; never written anywhere.

Bronze only holds protected values, so the raw PII of a person exists only in
the landing files (the inputs upstream systems deliver). ``loom audit-pii``
takes the values it looks for from here, and ``loom privacy-report`` builds its
raw-PII sandbox features from here. Both keep the rows in Spark memory or in
the driver; neither writes them to the lake, MLflow or a log.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.errors import ConfigError, DataError
from common.ingest.readers import read_landing
from common.ingest.validation import SOURCE_FILE, string_schema, validate_records
from common.lake.paths import IngestLocations, is_local
from common.settings import Paths
from common.spec.sources import Source
from common.spec.usecase import UseCase


def entity_key(spec: UseCase, source: Source) -> str:
    """The column of ``source`` that holds its entity's key."""
    return spec.entities[source.entity].key


def landing_folder_of(spec: UseCase, source_name: str, work: Paths, landing: Path | str | None = None) -> str:
    """The landing folder of ``source_name``; DataError when it holds no file."""
    source = spec.sources[source_name]
    folder = IngestLocations.of(work, spec.name, source_name, source, landing).folder
    if is_local(folder) and source.format != "kafka":  # a Kafka source's raw values are in its topics
        path = Path(folder)
        if not path.is_dir() or not any(p.is_file() and not p.name.startswith((".", "_")) for p in path.iterdir()):
            raise DataError(
                f"source {source_name!r} has no landing files at {folder}, and the raw values of its PII "
                "exist only there. Fix: pass --landing <the landing root the use case was ingested from>"
            )
    return folder


def read_raw(spark: SparkSession, spec: UseCase, source_name: str, folder: str) -> DataFrame:
    """Every landing record of a source as strings, one column per declared column.

    Malformed records are kept as far as they parse: a person's raw values in a
    rejected record must not leak either.
    """
    source = spec.sources[source_name]
    frame = read_landing(spark.read, source, folder)
    if source.format in ("json", "kafka"):
        parsed = F.from_json("value", string_schema(source), {"mode": "PERMISSIVE"})
        return frame.select(parsed.alias("r")).select(*[F.col("r")[name].alias(name) for name in source.columns])
    return frame.select(*[F.col(name).cast("string").alias(name) for name in source.columns])


def read_raw_typed(spark: SparkSession, spec: UseCase, source_name: str, folder: str) -> DataFrame:
    """The records ingestion would accept, with their declared types and raw (unprotected) values.

    Runs ingestion's checks (:func:`validate_records`) over all files at once,
    so malformed records and replays are left out as they are from bronze.
    """
    source = spec.sources[source_name]
    accepted, _ = validate_records(read_landing(spark.read, source, folder), source)
    return accepted.drop(SOURCE_FILE)


def pii_sources(spec: UseCase) -> dict[str, Source]:
    """Sources with at least one PII column that carries a policy."""
    return {
        name: source
        for name, source in spec.sources.items()
        if any(column.policy is not None for column in source.columns.values())
    }


def require_entity(spec: UseCase, entity: str | None) -> str:
    """The entity name to work on: ``entity``, or the use case's only one."""
    if entity is not None:
        if entity not in spec.entities:
            raise ConfigError(
                f"use case {spec.name!r} has no entity {entity!r}. Fix: use one of {sorted(spec.entities)}"
            )
        return entity
    if len(spec.entities) != 1:
        raise ConfigError(
            f"use case {spec.name!r} has entities {sorted(spec.entities)}. Fix: pass --entity-type <one of them>"
        )
    return next(iter(spec.entities))
