"""``loom forget``: remove one person from every store of a use case, and say what was removed.

Who: an entity key (``customer_id`` C00000042). In a source whose key column
is pseudonymized or deterministically encrypted, bronze holds a token instead;
forget computes the token under every key id of the keyring (rows written
before a key rotation carry the old one) and looks for all of them. A key
column encrypted at random or dropped cannot be searched: the report says so.

Where, in order:

1. **Delta tables**: every table under ``lake/<usecase>``: bronze (each source
   of the entity), quarantine (the rejected record's text holds the key as a
   JSON field; PII fields there are already redacted), feature history and
   tiles, predictions of every path (``predictions/*``), and any other table
   with the entity key column. Rows are deleted with a MERGE against a one-row
   table of the key and its tokens, so the key is never written into the
   transaction log as a DELETE predicate would be. Tables with deletion
   vectors are purged (``REORG ... APPLY (PURGE)``) so the rows leave the files.
   An ``aggregate`` (k-anonymous) column of the source is checked again: the
   deletion can leave a cell with fewer than k people, which is then suppressed.
2. **VACUUM** of every table whose files on disk still hold the person, with
   the given retention (default 168 hours, Delta's own default). Files removed
   less than that long ago stay until a later run: forget reports them and is
   safe to run again (idempotent: nothing left means nothing done). A
   retention below 168 hours switches Delta's safety check off for that one
   VACUUM only (it would break readers and streams older than the retention).
3. **Redis**: every key of the use case (any version, any group) whose hash tag
   is the entity.

What it reports but cannot remove: transaction log files whose per-file
statistics (min/max of the first columns) mention the key, until Delta's log
retention (``delta.logRetentionDuration``, 30 days) expires them at a
checkpoint; landing files (the raw inputs belong to the upstream system: a
re-ingestion from scratch would bring the person back); MLflow artifacts
(input examples of trained models) that mention the key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from common.errors import ConfigError, StoreError
from common.lake.files import DeltaTableFiles, delta_tables
from common.privacy.aggregate import enforce_k_on_table
from common.privacy.crypto import deterministic_tokens, pseudonyms_under_every_key
from common.privacy_lifecycle.landing import entity_key, read_raw, require_entity
from common.privacy_lifecycle.scan import Matcher, Needle, scan_file
from common.settings import Paths
from common.spec.privacy import Aggregate, Encrypt, Pseudonymize
from common.spec.usecase import UseCase

log = logging.getLogger("loom.privacy.forget")

DEFAULT_RETENTION_HOURS = 168.0
COMMIT_NOTE = "loom forget"
_ID = "__loom_forget_id"
_RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
_LISTING = "spark.sql.sources.parallelPartitionDiscovery.parallelism"


@dataclass
class TableOutcome:
    """What forget did to one Delta table."""

    table: str
    column: str | None = None
    deleted: int = 0
    suppressed: int = 0  # k-anonymous cells re-suppressed after the deletion
    vacuumed: bool = False
    residual_files: int = 0  # files on disk that still hold the person after this run
    log_files: int = 0  # transaction log files that mention the key
    note: str = ""


@dataclass
class ForgetReport:
    """Counts per store; nothing here names a value other than the entity key."""

    usecase: str
    entity: str
    retention_hours: float
    candidates: int = 1
    tables: list[TableOutcome] = field(default_factory=list)
    redis_keys: int | None = None
    unresolved: list[str] = field(default_factory=list)
    landing_records: dict[str, int] = field(default_factory=dict)
    mlflow_mentions: list[str] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def deleted_rows(self) -> int:
        return sum(t.deleted for t in self.tables)

    @property
    def residual_files(self) -> int:
        return sum(t.residual_files for t in self.tables)

    @property
    def complete(self) -> bool:
        """No data file holds the person any more and every table could be searched."""
        return self.residual_files == 0 and not self.unresolved

    def render(self) -> str:
        lines = [
            f"forget {self.usecase} {self.entity} (matched as the key and {self.candidates - 1} token(s)):",
            f"  {'table':<36}{'deleted':>9}{'vacuumed':>10}{'files left':>12}  note",
        ]
        for t in self.tables:
            vacuumed = "yes" if t.vacuumed else "-"
            extra = f"{t.note}" + (f"; {t.suppressed} k-anonymity value(s) suppressed" if t.suppressed else "")
            lines.append(f"  {t.table:<36}{t.deleted:>9}{vacuumed:>10}{t.residual_files:>12}  {extra}")
        redis = "not reached (no server given)" if self.redis_keys is None else f"{self.redis_keys} key(s) deleted"
        lines.append(f"  redis: {redis}")
        lines.append(f"  total: {self.deleted_rows} Delta row(s) deleted")
        for problem in self.unresolved:
            lines.append(f"  NOT SEARCHABLE: {problem}")
        if self.residual_files:
            until = self.started + timedelta(hours=self.retention_hours)
            lines.append(
                f"  pending: {self.residual_files} file(s) removed from their tables still hold the person until "
                f"VACUUM may delete them (retention {self.retention_hours:g} h): run this command again after "
                f"{until:%Y-%m-%dT%H:%MZ}"
            )
        logs = [t for t in self.tables if t.log_files]
        if logs:
            names = ", ".join(f"{t.table} ({t.log_files})" for t in logs)
            lines.append(
                f"  residue: transaction log files mention the key in per-file min/max statistics: {names}; "
                "Delta deletes them after delta.logRetentionDuration (default 30 days), at a checkpoint"
            )
        for source, count in self.landing_records.items():
            if count:
                lines.append(
                    f"  residue: landing files of {source} (raw inputs, owned upstream) still hold {count} record(s); "
                    "delete them upstream, or a re-ingestion from scratch brings the person back"
                )
        for mention in self.mlflow_mentions:
            lines.append(f"  residue: MLflow {mention} (immutable model artifact; retrain and delete the old version)")
        lines.append("forget: complete" if self.complete else "forget: INCOMPLETE (see above)")
        return "\n".join(lines)


# --- whom ---------------------------------------------------------------------------------------


def subject_values(spec: UseCase, entity: str, entity_id: str) -> tuple[list[str], list[str]]:
    """The values that identify the person in stored key columns, and the sources where none can.

    The raw key, plus its pseudonym or deterministic ciphertext under every key
    id of every source that protects the key column. Loads the keys (a missing
    key is a ConfigError before anything is touched).
    """
    key = spec.entities[entity].key
    values = [entity_id]
    unresolved: list[str] = []
    for name, source in spec.sources.items():
        if source.entity != entity or key not in source.columns:
            continue
        policy = source.columns[key].policy
        if isinstance(policy, Pseudonymize):
            values += pseudonyms_under_every_key(entity_id, policy.key)
        elif isinstance(policy, Encrypt) and policy.mode == "deterministic":
            values += deterministic_tokens(entity_id, policy.key)
        elif policy is not None:
            unresolved.append(
                f"bronze/{name}: its key column {key!r} is protected by {policy.method}"
                f"{f' ({policy.mode})' if isinstance(policy, Encrypt) else ''}, so rows cannot be matched to a person"
            )
    return list(dict.fromkeys(values)), unresolved


# --- Delta --------------------------------------------------------------------------------------


def _column(frame: DataFrame, name: str) -> str | None:
    return next((c for c in frame.columns if c.lower() == name.lower()), None)


def _quarantine_key(raw: F.Column, key: str) -> F.Column:
    """The key field of a quarantined record's text (JSON object, or text that only looks like one)."""
    parsed = F.get_json_object(raw, f"$.{key}")
    pattern = r'(?i)"' + re.escape(key) + r'"\s*:\s*"([^"]*)"'
    return F.coalesce(parsed, F.nullif(F.regexp_extract(raw, pattern, 1), F.lit("")))


def _merge_delete(spark: SparkSession, path: str, condition: F.Column, ids: DataFrame) -> int:
    from delta.tables import DeltaTable

    previous = spark.conf.get(_USER_METADATA, None)
    spark.conf.set(_USER_METADATA, COMMIT_NOTE)
    try:
        metrics = (
            DeltaTable.forPath(spark, path).alias("t").merge(ids.alias("s"), condition).whenMatchedDelete().execute()
        )
    finally:
        _restore(spark, _USER_METADATA, previous)
    if metrics is not None and "num_deleted_rows" in metrics.columns:
        return int(metrics.first()["num_deleted_rows"])
    return -1


def _restore(spark: SparkSession, name: str, previous: str | None) -> None:
    if previous is None:
        spark.conf.unset(name)
    else:
        spark.conf.set(name, previous)


def _purge_deletion_vectors(spark: SparkSession, path: str) -> None:
    """Rewrite files whose rows a deletion vector hides, so the rows are gone from the files too."""
    properties = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}
    if properties.get("delta.enableDeletionVectors", "false").lower() == "true":
        spark.sql(f"REORG TABLE delta.`{path}` APPLY (PURGE)")


def vacuum(spark: SparkSession, path: str, retention_hours: float) -> None:
    """VACUUM the table; a retention below Delta's default disables the safety check for this call only.

    VACUUM lists the table's files with as many tasks as
    ``spark.sql.sources.parallelPartitionDiscovery.parallelism`` (10,000 by
    default): on a small machine that costs minutes per table, so this call
    lists with the session's default parallelism instead.
    """
    from delta.tables import DeltaTable

    settings = {_LISTING: spark.conf.get("spark.default.parallelism", None) or "8"}
    if retention_hours < DEFAULT_RETENTION_HOURS:
        settings[_RETENTION_CHECK] = "false"
    previous = {name: spark.conf.get(name, None) for name in settings}
    for name, value in settings.items():
        spark.conf.set(name, value)
    try:
        DeltaTable.forPath(spark, path).vacuum(float(retention_hours))
    finally:
        for name, value in previous.items():
            _restore(spark, name, value)


def _files_holding(table: DeltaTableFiles, column: str, values: Sequence[str], quarantine: bool) -> int:
    """Data files on disk (current or not) whose ``column`` holds one of ``values``."""
    import pyarrow.parquet as pq

    wanted = pa.array(values, type=pa.string())
    pattern = None
    if quarantine:
        pattern = re.compile(r'"' + re.escape(column) + r'"\s*:\s*"(' + "|".join(map(re.escape, values)) + r')"', re.I)
    count = 0
    for path in table.data_files():
        source_column = "raw" if quarantine else column
        schema = pq.read_schema(path)
        present = next((n for n in schema.names if n.lower() == source_column.lower()), None)
        if present is None:
            continue
        cells = pq.read_table(path, columns=[present]).column(0)
        if quarantine:
            texts = [t for t in pc.unique(cells).to_pylist() if t is not None]
            found = any(pattern.search(t) for t in texts)
        else:
            found = pc.any(pc.is_in(pc.cast(cells, pa.string()), value_set=wanted)).as_py() or False
        count += bool(found)
    return count


def _log_mentions(table: DeltaTableFiles, matcher: Matcher) -> int:
    return sum(1 for path in table.log_files() if scan_file(path, matcher))


def forget_tables(
    spark: SparkSession,
    spec: UseCase,
    work: Paths,
    entity: str,
    values: Sequence[str],
    retention_hours: float,
    report: ForgetReport,
) -> None:
    """Delete the person from every Delta table of the use case, then VACUUM where files still hold them."""
    key = spec.entities[entity].key
    schema = StructType([StructField(_ID, StringType(), False)])
    ids = spark.createDataFrame([(v,) for v in values], schema)
    matcher = Matcher([Needle(v, values[0], "key") for v in values], whole_tokens=True)
    lake = work.lake / spec.name
    for table in delta_tables(spark, lake):
        outcome = TableOutcome(table.name)
        report.tables.append(outcome)
        layer, _, name = table.name.partition("/")
        if layer == "bronze" and name in spec.sources and spec.sources[name].entity != entity:
            outcome.note = f"source of entity {spec.sources[name].entity!r}: not searched"
            continue
        path = str(table.root)
        frame = spark.read.format("delta").load(path)
        quarantine = layer == "quarantine" and "raw" in frame.columns
        if quarantine:
            outcome.column = f"raw.{key}"
            condition = _quarantine_key(F.col("t.raw"), key) == F.col(f"s.{_ID}")
            matches = frame.join(F.broadcast(ids), _quarantine_key(frame["raw"], key) == ids[_ID], "left_semi")
        else:
            column = _column(frame, key)
            if column is None:
                outcome.note = f"no column {key}: not keyed by the entity"
                continue
            outcome.column = column
            condition = F.col(f"t.`{column}`") == F.col(f"s.{_ID}")
            matches = frame.join(F.broadcast(ids), frame[column] == ids[_ID], "left_semi")
        if matches.limit(1).count():
            outcome.deleted = _merge_delete(spark, path, condition, ids)
            _purge_deletion_vectors(spark, path)
            if layer == "bronze" and name in spec.sources:
                source = spec.sources[name]
                for column_name, column_spec in source.columns.items():
                    if isinstance(column_spec.policy, Aggregate) and source.id is not None:
                        outcome.suppressed += enforce_k_on_table(
                            spark, path, column_name, source.id, column_spec.policy.k
                        )
        probe = key if quarantine else (outcome.column or key)
        outcome.residual_files = _files_holding(table, probe, values, quarantine)
        if outcome.residual_files:
            vacuum(spark, path, retention_hours)
            outcome.vacuumed = True
            outcome.residual_files = _files_holding(table, probe, values, quarantine)
        outcome.log_files = _log_mentions(table, matcher)
        if outcome.deleted or outcome.vacuumed:
            log.info("forget %s: %s deleted %d row(s)", spec.name, table.name, outcome.deleted)


# --- Redis, landing, MLflow ---------------------------------------------------------------------


def forget_redis(url: str, usecase: str, values: Sequence[str]) -> int:
    """Delete every key of the use case (any version, any group) whose hash tag is one of ``values``.

    On a Redis Cluster (``LOOM_REDIS_CLUSTER=1``) the SCAN goes to every master; a person's keys share
    their hash tag, so one DEL per person stays in one slot.
    """
    from redis.exceptions import RedisError

    from common.online.redis_store import escape_entity
    from common.privacy_lifecycle.audit import glob_escape
    from common.runtime.redis_server import connect, describe

    client = connect(url)
    deleted = 0
    try:
        for value in values:
            pattern = f"{glob_escape(f'loom:{usecase}:')}*{{{glob_escape(escape_entity(value))}}}*"
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                deleted += int(client.delete(*keys))
    except RedisError as err:
        raise StoreError(
            f"forget: deleting the person's keys in Redis at {describe(url)} failed after {deleted} key(s): {err}. "
            "Fix: bring Redis back and run `loom forget` again (it deletes what is left)"
        ) from err
    finally:
        client.close()
    return deleted


def landing_records(
    spark: SparkSession, spec: UseCase, work: Paths, entity: str, entity_id: str, landing: Path | str | None
) -> dict[str, int]:
    """How many landing records of each source of the entity still name the person (reported, not removed)."""
    from common.lake.paths import IngestLocations, is_local

    counts: dict[str, int] = {}
    for name, source in spec.sources.items():
        if source.entity != entity:
            continue
        folder = IngestLocations.of(work, spec.name, name, source, landing).folder
        if is_local(folder) and not Path(folder).is_dir():
            continue
        raw = read_raw(spark, spec, name, folder)
        counts[name] = raw.where(F.col(entity_key(spec, source)) == F.lit(entity_id)).count()
    return counts


def mlflow_mentions(work: Paths, usecase: str, values: Sequence[str]) -> list[str]:
    """Artifact files of the use case's experiment (local store) that mention the person's key."""
    from urllib.parse import unquote, urlparse

    import mlflow

    from common.runtime.tracking import configure

    configure(work)
    experiment = mlflow.get_experiment_by_name(f"loom-{usecase}")
    if experiment is None or not experiment.artifact_location.startswith("file:"):
        return []
    root = Path(unquote(urlparse(experiment.artifact_location).path))
    matcher = Matcher([Needle(v, values[0], "key") for v in values], whole_tokens=True)
    return [
        f"artifact {path.relative_to(root)}"
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".csv", ".txt"))
        if scan_file(path, matcher)
    ]


def forget(
    spark: SparkSession,
    spec: UseCase,
    work: Paths,
    entity_id: str,
    *,
    redis_url: str | None,
    entity_type: str | None = None,
    retention_hours: float = DEFAULT_RETENTION_HOURS,
    landing: Path | str | None = None,
) -> ForgetReport:
    """Remove ``entity_id`` from every store of the use case; see the module docstring."""
    if not entity_id or not entity_id.strip():
        raise ConfigError("--entity is empty. Fix: pass the entity key, e.g. --entity C00000042")
    if retention_hours < 0:
        raise ConfigError(f"--vacuum-retention-hours {retention_hours:g} is negative. Fix: pass 0 or more")
    entity = require_entity(spec, entity_type)
    values, unresolved = subject_values(spec, entity, entity_id)
    report = ForgetReport(spec.name, entity_id, retention_hours, candidates=len(values), unresolved=unresolved)
    forget_tables(spark, spec, work, entity, values, retention_hours, report)
    if redis_url:
        report.redis_keys = forget_redis(redis_url, spec.name, values)
    report.landing_records = landing_records(spark, spec, work, entity, entity_id, landing)
    report.mlflow_mentions = mlflow_mentions(work, spec.name, values)
    return report
