"""``loom audit-pii``: look for the raw PII of sampled people in everything Loom wrote.

1. **What to look for.** A seeded sample of entities (plus any named ones) is
   drawn from the landing files of the sources with PII policies; every raw
   value of their PII columns becomes a needle (:mod:`common.privacy_lifecycle.scan`),
   except values that their own policy publishes unchanged (a date of birth on
   January 1st is its own ``year`` generalization; an ``aggregate`` value may be
   published when k people share it). Landing files are the raw inputs, so
   they are where the values come from, not a place that is audited.
2. **Where.** Every file under ``lake/<usecase>`` (bronze, quarantine, feature
   history and tiles, predictions, anything else), read as Parquet column by
   column, including files of old versions that VACUUM has not removed yet, and
   the transaction logs (whose statistics hold min/max values); the streaming
   checkpoints of the use case; every Redis key under ``loom:<usecase>:`` (name
   and value, any type); MLflow: the params, tags and metric names of every run
   of the experiment ``loom-<usecase>`` (deleted runs too), the tags and
   descriptions of their registered versions, every artifact file (models,
   input examples, plots' sources, JSON), and the raw pages of a local sqlite
   store (which keep deleted rows); and the job log files given.
3. **Report.** Each hit names the store, the location and which person's which
   column it is; never the value. Any hit fails the audit.

Quarantine counts as a protected store: ingestion redacts the PII fields of a
rejected record (``common.ingest.redaction``), and the audit checks that it did.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from common.lake.files import delta_tables
from common.privacy_lifecycle.landing import entity_key, landing_folder_of, pii_sources, read_raw
from common.privacy_lifecycle.scan import MIN_LENGTH, Matcher, Needle, scan_file
from common.settings import Paths
from common.spec.privacy import Aggregate, Generalize
from common.spec.sources import Column
from common.spec.usecase import UseCase

MASK = "<raw value>"


@dataclass(frozen=True)
class Hit:
    """One raw value found in one place."""

    store: str
    location: str
    needle: Needle

    def render(self) -> str:
        return f"[{self.store}] {self.location}: {self.needle.label}"


@dataclass
class AuditReport:
    """What was searched, where, and what was found."""

    usecase: str
    subjects: list[str] = field(default_factory=list)
    needles: int = 0
    not_searched: dict[str, int] = field(default_factory=dict)  # reason -> values
    scanned: dict[str, int] = field(default_factory=dict)  # what -> how many
    notes: list[str] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.hits

    def count(self, what: str, n: int = 1) -> None:
        self.scanned[what] = self.scanned.get(what, 0) + n

    def render(self) -> str:
        shown = ", ".join(self.subjects[:10]) + (
            f", ... ({len(self.subjects)} in all)" if len(self.subjects) > 10 else ""
        )
        lines = [
            f"audit-pii {self.usecase}: {len(self.subjects)} subjects ({shown}), {self.needles} raw values searched",
        ]
        for reason, n in sorted(self.not_searched.items()):
            lines.append(f"  not searched: {n} values ({reason})")
        lines.append("  scanned: " + ", ".join(f"{n} {what}" for what, n in self.scanned.items()))
        lines += [f"  note: {note}" for note in self.notes]
        if self.hits:
            lines.append(f"FOUND {len(self.hits)} raw PII value(s):")
            lines += [f"  {hit.render()}" for hit in self.hits]
            lines.append("audit-pii: FAILED")
        else:
            lines.append("audit-pii: OK (no raw value found)")
        return "\n".join(lines)


# --- what to look for ---------------------------------------------------------------------------


def published_unchanged(value: str, column: Column) -> str | None:
    """Why ``value`` may legitimately appear as is (its policy's output equals it), else None."""
    policy = column.policy
    if isinstance(policy, Generalize):
        if policy.rule == "prefix" and policy.keep is not None and len(value) <= policy.keep:
            return "shorter than the kept prefix"
        if policy.rule == "year" and value[5:10] == "01-01" and len(value) <= 10:
            return "a January 1st date is its own year"
        if policy.rule == "bucket" and policy.size is not None:
            try:
                number = float(value)
            except ValueError:
                return None
            if (number // policy.size) * policy.size == number:
                return "a bucket edge is its own bucket"
    if isinstance(policy, Aggregate) and (not policy.keep or len(value) <= max(policy.keep)):
        return "published as is when k people share it (aggregate)"
    return None


def sample_subjects(keys: DataFrame, key: str, sample: int, seed: int) -> list[str]:
    """``sample`` distinct keys, the same for the same data and seed (ordered by a seeded hash)."""
    if sample <= 0:
        return []
    order = F.sha2(F.concat(F.lit(f"{seed}:"), F.col(key)), 256)
    rows = keys.where(F.col(key).isNotNull()).distinct().orderBy(order).limit(sample).collect()
    return sorted(row[0] for row in rows)


def subject_needles(
    spark: SparkSession,
    spec: UseCase,
    work: Paths,
    *,
    sample: int = 20,
    entities: Sequence[str] = (),
    seed: int = 7,
    landing: Path | str | None = None,
    report: AuditReport | None = None,
) -> tuple[list[str], list[Needle]]:
    """The sampled (and named) subjects and every raw PII value of theirs in the landing files."""
    report = report if report is not None else AuditReport(spec.name)
    raws: dict[str, tuple[DataFrame, str]] = {}
    for name, source in pii_sources(spec).items():
        key = entity_key(spec, source)
        raws[name] = (read_raw(spark, spec, name, landing_folder_of(spec, name, work, landing)), key)
    subjects: set[str] = set(entities)
    if sample > 0 and raws:
        keys = None
        for frame, key in raws.values():
            part = frame.select(F.col(key).alias("_subject"))
            keys = part if keys is None else keys.unionByName(part)
        subjects |= set(sample_subjects(keys, "_subject", sample, seed))
    chosen = sorted(subjects)
    needles: set[Needle] = set()
    if chosen:
        wanted = spark.createDataFrame([(s,) for s in chosen], "_subject string")
        for name, (frame, key) in raws.items():
            source = spec.sources[name]
            columns = [c for c, column in source.columns.items() if column.policy is not None and c != key]
            rows = frame.join(F.broadcast(wanted), frame[key] == wanted["_subject"], "left_semi")
            for row in rows.select(key, *columns).distinct().collect():
                for column_name in columns:
                    value = row[column_name]
                    if value is None or not value.strip():
                        continue
                    reason = published_unchanged(value.strip(), source.columns[column_name])
                    if reason is None and len(value.strip()) < MIN_LENGTH:
                        reason = f"shorter than {MIN_LENGTH} characters: too short to search without noise"
                    if reason is not None:
                        report.not_searched[reason] = report.not_searched.get(reason, 0) + 1
                        continue
                    needles.add(Needle(value.strip(), str(row[key]), f"{name}.{column_name}"))
    return chosen, sorted(needles, key=lambda n: (n.subject, n.origin, n.text))


# --- where --------------------------------------------------------------------------------------


# Spark's state store files (RocksDB changelogs and snapshots) are written as LZ4 blocks. Their bytes hold the
# text only in fragments, cut where the compressor chose, so a byte search finds raw values that were never
# written (a zip code of a sampled subject between two compressor tokens inside a tile state's numbers, seen
# in CI) and can miss ones that were. They hold aggregates keyed by protected keys (docs/privacy.md); counted
# as skipped, not searched.
COMPRESSED_MAGIC = b"LZ4Block"


def is_compressed_block(path: Path) -> bool:
    """Whether ``path`` starts like a Java ``LZ4BlockOutputStream`` (Spark's state store files)."""
    with path.open("rb") as handle:
        return handle.read(len(COMPRESSED_MAGIC)) == COMPRESSED_MAGIC


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis MATCH pattern."""
    for char in "\\*?[]":
        text = text.replace(char, "\\" + char)
    return text


class _Auditor:
    def __init__(self, report: AuditReport, matcher: Matcher) -> None:
        self.report = report
        self.matcher = matcher

    def mask(self, text: str) -> str:
        """``text`` with any needle replaced, so a location never shows a raw value."""
        low = text.lower()
        for needle in self.matcher.by_text:
            start = low.find(needle)
            while start >= 0:
                text = text[:start] + MASK + text[start + len(needle) :]
                low = text.lower()
                start = low.find(needle, start + len(MASK))
        return text

    def hit(self, store: str, location: str, needles: Iterable[Needle]) -> None:
        for needle in sorted(needles, key=lambda n: (n.subject, n.origin)):
            self.report.hits.append(Hit(store, self.mask(location), needle))

    def file(self, store: str, path: Path, label: str) -> None:
        for column, needles in scan_file(path, self.matcher).items():
            self.hit(store, f"{label}{f' column {column}' if column else ''}", needles)

    # -- the lake ---------------------------------------------------------------

    def lake(self, spark: SparkSession, lake: Path) -> None:
        tables = delta_tables(spark, lake)
        in_tables: set[Path] = set()
        for table in tables:
            self.report.count("Delta tables")
            if table.current is None:
                self.report.notes.append(f"delta {table.name} could not be read; its files were scanned anyway")
            for path in table.data_files():
                in_tables.add(path)
                self.report.count("Parquet files")
                current = table.current is not None and path.resolve() in table.current
                state = "current version" if current else "old version: removed, not vacuumed"
                self.file("delta", path, f"{table.name}/{path.relative_to(table.root)} ({state})")
            for path in table.log_files():
                in_tables.add(path)
                self.report.count("log files")
                self.file("delta", path, f"{table.name}/_delta_log/{path.name} (transaction log)")
        for path in sorted(p for p in lake.rglob("*") if p.is_file() and p not in in_tables):
            if path.name.startswith(".") and path.name.endswith(".crc"):
                self.report.count("checksum files (skipped)")
                continue
            self.report.count("other lake files")
            self.file("lake", path, str(path.relative_to(lake)))

    def folder(self, store: str, folder: Path, what: str) -> None:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if is_compressed_block(path):
                self.report.count(f"compressed {what} (skipped)")
                continue
            self.report.count(what)
            self.file(store, path, str(path))

    # -- Redis ------------------------------------------------------------------

    def redis(self, url: str, usecase: str) -> None:
        from common.runtime.redis_server import connect

        client = connect(url)
        try:
            for key in client.scan_iter(match=glob_escape(f"loom:{usecase}:") + "*", count=1000):
                self.report.count("Redis keys")
                name = key.decode("latin-1")
                self.hit("redis", f"key name {name}", self.matcher.find_in_bytes(key))
                self.hit("redis", f"value of key {name}", self._redis_values(client, key))
        finally:
            client.close()

    def _redis_values(self, client, key: bytes) -> set[Needle]:
        kind = client.type(key).decode()
        if kind == "string":
            parts = [client.get(key) or b""]
        elif kind == "hash":
            parts = [b for pair in client.hgetall(key).items() for b in pair]
        elif kind == "list":
            parts = client.lrange(key, 0, -1)
        elif kind == "set":
            parts = list(client.smembers(key))
        elif kind == "zset":
            parts = client.zrange(key, 0, -1)
        elif kind == "stream":
            parts = [b for _, fields in client.xrange(key) for pair in fields.items() for b in pair]
        else:
            self.report.notes.append(f"Redis key of type {kind} not read")
            return set()
        found: set[Needle] = set()
        for part in parts:
            found |= self.matcher.find_in_bytes(part if isinstance(part, bytes) else str(part).encode())
        return found

    # -- MLflow -----------------------------------------------------------------

    def mlflow(self, work: Paths, usecase: str) -> None:
        from mlflow.entities import ViewType
        from mlflow.tracking import MlflowClient

        from common.runtime.tracking import configure

        uri = configure(work)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment = client.get_experiment_by_name(f"loom-{usecase}")
        run_ids: set[str] = set()
        if experiment is None:
            self.report.notes.append(f"MLflow has no experiment loom-{usecase}")
        else:
            token = None
            while True:
                page = client.search_runs(
                    [experiment.experiment_id], run_view_type=ViewType.ALL, max_results=500, page_token=token
                )
                for run in page:
                    self._run(run)
                    run_ids.add(run.info.run_id)
                token = page.token
                if not token:
                    break
            self._registry(client, run_ids)
            self._artifacts(client, experiment.artifact_location, run_ids)
        if uri.startswith("sqlite:///"):
            database = Path(uri[len("sqlite:///") :])
            if database.is_file():
                self.report.count("MLflow store files")
                self.file("mlflow", database, f"tracking store {database.name} (raw pages, deleted rows included)")

    def _run(self, run) -> None:
        self.report.count("MLflow runs")
        where = f"run {run.info.run_id}"
        texts = [("run name", run.info.run_name or "")]
        texts += [(f"param {k}", f"{k}={v}") for k, v in run.data.params.items()]
        texts += [(f"tag {k}", f"{k}={v}") for k, v in run.data.tags.items()]
        texts += [(f"metric {k}", k) for k in run.data.metrics]
        for what, text in texts:
            self.hit("mlflow", f"{where} {what}", self.matcher.find_in_text(text))

    def _registry(self, client, run_ids: set[str]) -> None:
        models, token = [], None
        while True:
            page = client.search_registered_models(max_results=100, page_token=token)
            models += list(page)
            token = page.token
            if not token:
                break
        for model in models:
            versions = [v for v in client.search_model_versions(f"name = '{model.name}'") if v.run_id in run_ids]
            if not versions:
                continue
            self.report.count("registered models")
            texts = [("description", model.description or "")]
            texts += [(f"tag {k}", f"{k}={v}") for k, v in (model.tags or {}).items()]
            for version in versions:
                texts += [(f"v{version.version} description", version.description or "")]
                texts += [(f"v{version.version} tag {k}", f"{k}={v}") for k, v in (version.tags or {}).items()]
            for what, text in texts:
                self.hit("mlflow", f"registered model {model.name} {what}", self.matcher.find_in_text(text))

    def _artifacts(self, client, location: str, run_ids: set[str]) -> None:
        if location.startswith("file:"):
            from urllib.parse import unquote, urlparse

            root = Path(unquote(urlparse(location).path))
            if root.is_dir():
                # the experiment's folder holds every run's artifacts and every logged model (MLflow 3)
                for path in sorted(p for p in root.rglob("*") if p.is_file()):
                    self.report.count("MLflow artifact files")
                    self.file("mlflow", path, f"artifact {path.relative_to(root)}")
            return
        import mlflow

        with tempfile.TemporaryDirectory() as folder:
            for run_id in sorted(run_ids):
                target = Path(folder) / run_id
                mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(target))
                for path in sorted(p for p in target.rglob("*") if p.is_file()):
                    self.report.count("MLflow artifact files")
                    self.file("mlflow", path, f"run {run_id} artifact {path.relative_to(target)}")
        self.report.notes.append(
            "remote artifact store: run artifacts were downloaded and scanned; logged models outside runs were not"
        )


def audit(
    spark: SparkSession,
    spec: UseCase,
    work: Paths,
    *,
    redis_url: str | None,
    sample: int = 20,
    entities: Sequence[str] = (),
    logs: Sequence[Path] = (),
    landing: Path | str | None = None,
    seed: int = 7,
) -> AuditReport:
    """Search every store of ``spec``'s use case for the raw PII of sampled subjects; see the module docstring.

    ``redis_url`` None skips Redis (and says so in the report).
    """
    report = AuditReport(spec.name)
    report.subjects, needles = subject_needles(
        spark, spec, work, sample=sample, entities=entities, seed=seed, landing=landing, report=report
    )
    matcher = Matcher(needles)
    report.needles = len(matcher)
    if not report.needles:
        report.notes.append("no raw PII value to search for: the sample is empty or has no PII")
    auditor = _Auditor(report, matcher)
    auditor.lake(spark, work.lake / spec.name)
    checkpoints = work.checkpoints / spec.name
    if checkpoints.is_dir():
        auditor.folder("checkpoints", checkpoints, "checkpoint files")
        report.notes.append("streaming state files are LZ4-compressed: counted as skipped, not searched as text")
    if redis_url:
        auditor.redis(redis_url, spec.name)
    else:
        report.notes.append("Redis was not scanned (no server given)")
    auditor.mlflow(work, spec.name)
    log_paths = [Path(p) for p in logs]
    default_logs = work.home / "logs"
    if not log_paths and default_logs.is_dir():
        log_paths = [default_logs]
    if not log_paths:
        report.notes.append(
            "no job logs scanned: Loom jobs log to stderr; capture them to files and pass --logs <folder or file>"
        )
    for path in log_paths:
        if path.is_dir():
            auditor.folder("logs", path, "log files")
        elif path.is_file():
            report.count("log files")
            auditor.file("logs", path, str(path))
        else:
            report.notes.append(f"log path {path} does not exist")
    report.hits.sort(key=lambda h: (h.store, h.location, h.needle.subject, h.needle.origin))
    return report
