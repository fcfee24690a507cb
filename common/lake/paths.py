"""Where a use case's data lives: landing folders, and the Delta tables of every layer.

``lake/<usecase>/<layer>/<name>``: ``bronze`` and ``quarantine`` (per source), ``features``
(per group), ``predictions`` (per path: batch, stream, rest, shadow, actions) and
``monitoring`` (metrics, drift). Pure path arithmetic (no Spark), shared by the generator
and every job, so all agree on what ``{landing}`` in a source's ``path`` means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.settings import Paths
from common.spec.sources import Source

if TYPE_CHECKING:  # a type only: importing the plan here would load the compiler for path arithmetic
    from common.compile.plan import GroupPlan

LANDING_PLACEHOLDER = "{landing}"


def landing_folder(source: Source, landing: Path | str) -> str:
    """The source's folder: its ``path`` with ``{landing}`` replaced by ``landing``.

    ``landing`` is the use case's landing root, by default ``$LOOM_HOME/landing/<usecase>``.
    A path without the placeholder (``s3://...``, ``/mnt/...``) is returned unchanged. A Kafka source
    has no folder: its "folder" is ``kafka:<topic>[,<topic>]``, what logs and messages show.
    """
    if source.path is None:
        return "kafka:" + ",".join(source.kafka.topic_list if source.kafka else [])
    return source.path.replace(LANDING_PLACEHOLDER, str(landing).rstrip("/"))


def is_local(path: str) -> bool:
    """True for a plain file-system path (no ``scheme://``), which Python may create."""
    return "://" not in path and not path.startswith("file:")


@dataclass(frozen=True)
class IngestLocations:
    """Input and outputs of ingesting one source."""

    folder: str
    bronze: str
    quarantine: str
    checkpoint: str

    @classmethod
    def of(
        cls,
        work: Paths,
        usecase: str,
        source_name: str,
        source: Source,
        landing: Path | str | None = None,
    ) -> IngestLocations:
        """Locations under ``work``; ``landing`` overrides the landing root ``work.landing / usecase``."""
        root = landing if landing is not None else work.landing / usecase
        return cls(
            folder=landing_folder(source, root),
            bronze=work.table(usecase, "bronze", source_name),
            quarantine=work.table(usecase, "quarantine", source_name),
            checkpoint=work.checkpoint(usecase, f"ingest_{source_name}"),
        )


def bronze_path(work: Paths, usecase: str, source: str) -> str:
    """Delta table of one source's ingested (protected) rows."""
    return work.table(usecase, "bronze", source)


def history_path(work: Paths, plan: GroupPlan) -> str:
    """Delta table of one feature group's history (the offline store)."""
    return work.table(plan.usecase, "features", plan.name)


def predictions_path(work: Paths, usecase: str, kind: str = "batch") -> str:
    """Delta table of predictions of one path (batch, stream, rest)."""
    return work.table(usecase, "predictions", kind)


def monitoring_path(work: Paths, usecase: str, name: str) -> str:
    """Path of a monitoring table (``metrics`` or ``drift``)."""
    return work.table(usecase, "monitoring", name)
