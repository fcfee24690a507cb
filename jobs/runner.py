"""The shared shell of every job: arguments, logging, and user errors without tracebacks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Protocol

from common.errors import LoomError
from common.log import setup_logging


class Job(Protocol):
    """What a job module provides."""

    DESCRIPTION: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def iso_date(text: str) -> date:
    """argparse type for YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; write YYYY-MM-DD") from None


def iso_time(text: str) -> datetime:
    """argparse type for an ISO-8601 time, e.g. 2026-01-15T00:00:00Z (no zone = UTC); ``now`` is allowed."""
    if text == "now":
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time; write e.g. 2026-01-15T00:00:00Z or now") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def add_usecase_argument(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--usecase", required=required, help="use case name (a folder in metadata/) or path")


def add_spark_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", default="local", help="Spark profile in spark-conf/ (local, standalone, databricks)"
    )


def execute(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a job; a :class:`LoomError` becomes one message and exit code 2."""
    setup_logging(getattr(args, "log_level", None))
    try:
        return int(run(args) or 0)
    except LoomError as err:
        print(f"loom {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"loom {name}: interrupted", file=sys.stderr)
        return 130


def build_parser(name: str, job: Job, prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or f"loom {name}", description=job.DESCRIPTION)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING or ERROR")
    job.add_arguments(parser)
    return parser


def main_for(name: str, job: Job, argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.<name>`` and ``spark-submit jobs/<name>.py`` land here."""
    args = build_parser(name, job).parse_args(argv)
    return execute(name, job.run, args)
