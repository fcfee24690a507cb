"""Where one source's data lives: landing folder, bronze and quarantine tables, checkpoint.

Pure path arithmetic (no Spark), shared by the generator and the ingestion job so
both agree on what ``{landing}`` in a source's ``path`` means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.settings import Paths
from common.spec.sources import Source

LANDING_PLACEHOLDER = "{landing}"


def landing_folder(source: Source, landing: Path | str) -> str:
    """The source's folder: its ``path`` with ``{landing}`` replaced by ``landing``.

    ``landing`` is the use case's landing root, by default ``$LOOM_HOME/landing/<usecase>``.
    A path without the placeholder (``s3://...``, ``/mnt/...``) is returned unchanged.
    """
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
