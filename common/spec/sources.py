"""Sources: landing files, or Kafka topics, that ingestion turns into bronze Delta tables."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, StringConstraints, model_validator

from common.spec.base import Duration, Name, Strict
from common.spec.privacy import Policy

ColumnType = Literal["string", "long", "int", "double", "boolean", "timestamp", "date"]
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"
ENV_NAME_PATTERN = r"^[A-Z_][A-Z0-9_]{0,127}$"
DEFAULT_BOOTSTRAP_ENV = "LOOM_KAFKA_BOOTSTRAP"  # common.runtime.kafka_server.BOOTSTRAP_ENV

Topic = Annotated[str, StringConstraints(pattern=TOPIC_PATTERN)]
EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)]


class Column(Strict):
    """One column of a source: its type, whether it must be present, its domain and PII policy."""

    type: ColumnType
    required: bool = Field(default=False, description="a record without a value goes to quarantine")
    allowed: list[str | int | float] | None = Field(
        default=None, description="closed set of valid values; others go to quarantine"
    )
    pii: bool | Policy = Field(
        default=False,
        description="false: not PII. true: PII without a policy (refused by the compiler). "
        "Otherwise the policy that protects it at ingestion.",
    )

    @property
    def is_pii(self) -> bool:
        return self.pii is not False

    @property
    def policy(self) -> Policy | None:
        return None if isinstance(self.pii, bool) else self.pii


class EventTimeRange(Strict):
    """When an event may plausibly have happened; ingestion quarantines an ``event_time`` outside it.

    Upstream systems send placeholder dates (0001-01-01, 1900-01-01, 9999-12-31): they would
    distort every window, and some tools cannot even read them back from bronze.
    """

    not_before: date = Field(
        default=date(2000, 1, 1), description="earliest plausible event date (UTC); earlier events are quarantined"
    )
    max_future: Duration = Field(
        default="1 day",
        description="how far after the ingestion's clock an event may be stamped (clock skew); later ones are quarantined",
    )


class KafkaSettings(Strict):
    """Where a ``format: kafka`` source reads its events: topics, value format, time, offsets, connection.

    Connection secrets are never metadata: the bootstrap servers come from the environment variable
    ``bootstrap_env`` names, and SASL/TLS from ``LOOM_KAFKA_SECURITY_PROTOCOL``, ``LOOM_KAFKA_SASL_*`` and
    ``LOOM_KAFKA_SSL_CA_FILE`` (the password also from a file: ``LOOM_KAFKA_SASL_PASSWORD_FILE``).
    """

    topic: Topic | None = Field(default=None, description="the topic to read (or topics: a list)")
    topics: list[Topic] | None = Field(default=None, min_length=1, description="several topics, read as one stream")
    value_format: Literal["json", "avro"] = Field(
        default="json",
        description="how a message's value is written: json, one JSON object; avro, one Avro record in binary "
        "encoding (no container header, no schema registry prefix) written with the schema of avro_schema",
    )
    avro_schema: str | None = Field(
        default=None,
        min_length=1,
        description="the Avro schema (.avsc, a record) of value_format avro: a path relative to the metadata file "
        "that declares the source, or absolute",
    )
    event_time_from: Literal["field", "kafka_timestamp"] = Field(
        default="field",
        description="field: the source's event_time column from the value; kafka_timestamp: the message's "
        "timestamp becomes the event_time column (the value need not carry it)",
    )
    starting_offsets: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="where a new checkpoint starts; a checkpoint that exists resumes from its own offsets",
    )
    max_offsets_per_trigger: int | None = Field(
        default=None,
        ge=1,
        description="most messages per micro-batch (the Kafka counterpart of --max-files-per-trigger)",
    )
    bootstrap_env: EnvName = Field(
        default=DEFAULT_BOOTSTRAP_ENV,
        description="environment variable that holds the bootstrap servers (host:port[,host:port])",
    )
    broker_timeout: Duration = Field(
        default="3 minutes",
        description="how long a stream waits for a broker that does not answer; then the job stops with an "
        "error naming the broker, and run again it resumes from its checkpoint's offsets",
    )

    # the schema file resolved against the metadata folder by the loader (common.spec.avro)
    _avro_schema_file: Path | None = PrivateAttr(default=None)

    @property
    def topic_list(self) -> list[str]:
        """The topics to subscribe to."""
        return [self.topic] if self.topic is not None else list(self.topics or [])

    @property
    def avro_schema_file(self) -> Path | None:
        """The Avro schema file: as the loader resolved it, else ``avro_schema`` as written (a model built in code)."""
        if self.avro_schema is None:
            return None
        return self._avro_schema_file or Path(self.avro_schema)

    @model_validator(mode="after")
    def _one_topic_setting(self) -> KafkaSettings:
        if (self.topic is None) == (self.topics is None):
            raise ValueError(
                "give exactly one of topic (one topic) or topics (a list); fix: e.g. topic: loom.churn.events"
            )
        if self.value_format == "avro" and self.avro_schema is None:
            raise ValueError(
                "value_format avro needs avro_schema, the file of the values' Avro schema; "
                "fix: add e.g. avro_schema: events.avsc (beside this metadata file)"
            )
        if self.value_format != "avro" and self.avro_schema is not None:
            raise ValueError("avro_schema applies to value_format avro only; fix: remove avro_schema")
        return self


class Source(Strict):
    """A landing folder of files (or Kafka topics), its schema, its entity and its time column.

    ``kind: events`` are immutable facts with an event time; ``kind: table`` is a
    snapshot of one row per entity (profiles, accounts), versioned by ``event_time``
    when it has one.
    """

    kind: Literal["events", "table"] = "events"
    format: Literal["json", "csv", "parquet", "kafka"]
    path: str | None = Field(
        default=None,
        description="folder of landing files; '{landing}' expands to $LOOM_HOME/landing/<usecase> "
        "(required for json, csv and parquet; not for kafka)",
    )
    kafka: KafkaSettings | None = Field(default=None, description="topics and connection of a format: kafka source")
    entity: Name = Field(description="the entity whose key column this source carries")
    id: Name | None = Field(default=None, description="unique record id; duplicates are ingested once")
    event_time: Name | None = Field(default=None, description="timestamp column that orders the records")
    watermark: Duration | None = Field(default=None, description="how late an event may arrive in a stream")
    event_time_range: EventTimeRange = Field(
        default_factory=EventTimeRange,
        description="plausible event times (default: from 2000-01-01 to 1 day after now); others are quarantined",
    )
    columns: dict[Name, Column] = Field(min_length=1)

    @model_validator(mode="after")
    def _where_it_reads(self) -> Source:
        if self.format == "kafka":
            if self.kafka is None:
                raise ValueError("format kafka needs a kafka: section; fix: add kafka: {topic: <topic name>}")
            if self.path is not None:
                raise ValueError("a format kafka source reads topics, not a folder; fix: remove path")
            if self.kind != "events":
                raise ValueError("format kafka is for sources of kind 'events'; fix: write kind: events")
        else:
            if self.kafka is not None:
                raise ValueError("kafka: applies to format kafka only; fix: remove it or write format: kafka")
            if self.path is None:
                raise ValueError(
                    f'format {self.format} reads landing files and needs path; fix: add e.g. path: "{{landing}}/<name>"'
                )
        return self

    @property
    def event_time_from_kafka(self) -> bool:
        """Whether the ``event_time`` column is the Kafka message's timestamp rather than a field of the value."""
        return self.kafka is not None and self.kafka.event_time_from == "kafka_timestamp"

    @model_validator(mode="after")
    def _columns_exist(self) -> Source:
        for field_name in ("id", "event_time"):
            column = getattr(self, field_name)
            if column is not None and column not in self.columns:
                raise ValueError(f"{field_name} {column!r} is not one of the columns {sorted(self.columns)}")
        if self.event_time is not None and self.columns[self.event_time].type != "timestamp":
            raise ValueError(f"event_time column {self.event_time!r} must have type timestamp")
        if self.kind == "events" and self.event_time is None:
            raise ValueError("a source of kind 'events' needs event_time (its timestamp column)")
        return self
