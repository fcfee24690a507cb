"""The shared shell of every job: arguments, logging, user errors without tracebacks, and the
common start of a use-case job (:func:`set_up`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from common.errors import ConfigError, LoomError
from common.runtime.log import setup_logging
from common.runtime.spark import build_session
from common.settings import paths
from common.spec import load_usecase
from common.spec.loader import METADATA_ENV

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from common.compile.plan import Plan
    from common.settings import Paths
    from common.spec import UseCase


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
    parser.add_argument(
        "--usecase",
        required=required,
        help="use case name (a folder of --metadata-dir, $LOOM_METADATA or ./metadata, then the bundled "
        "examples) or the path of its folder or file",
    )
    add_metadata_dir_argument(parser)


def add_metadata_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metadata-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"folder of your use cases, one sub-folder each (default: ${METADATA_ENV}, else ./metadata)",
    )


def apply_metadata_dir(args: argparse.Namespace) -> None:
    """``--metadata-dir``: checked, then exported as ``$LOOM_METADATA`` so that this job and every process
    it starts (REST workers, scheduled jobs) find use cases there."""
    folder = getattr(args, "metadata_dir", None)
    if folder is None:
        return
    if not folder.is_dir():
        raise ConfigError(
            f"--metadata-dir {str(folder)!r} is not a folder. Fix: pass the folder that holds your use cases "
            "(metadata/, with one sub-folder per use case)"
        )
    os.environ[METADATA_ENV] = str(folder.resolve())


def add_spark_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", default="local", help="Spark profile in spark-conf/ (local, standalone, databricks)"
    )


def _compile(spec: UseCase) -> Plan:
    # imported on use: the compiler loads pyspark, which jobs such as `loom validate` never need
    from common.compile import compile_usecase

    return compile_usecase(spec)


@dataclass
class UseCaseJob:
    """What a use-case job works with, made by :func:`set_up`."""

    name: str
    args: argparse.Namespace
    spec: UseCase
    work: Paths
    with_model: bool = False
    _plan: Plan | None = field(default=None, repr=False)

    @property
    def plan(self) -> Plan:
        """The compiled use case."""
        if self._plan is None:
            self._plan = _compile(self.spec)
        return self._plan

    @cached_property
    def spark(self) -> SparkSession:
        """The session of ``--profile``, named ``loom-<job>-<usecase>[-<model>]``. Started on first use:
        what a job checks before it uses Spark fails before Spark starts."""
        app_name = f"loom-{self.name}-{self.spec.name}" + (f"-{self.args.model}" if self.with_model else "")
        return build_session(self.args.profile, app_name=app_name)


def set_up(
    name: str, args: argparse.Namespace, *, model: bool = False, compiled: bool = False, mlflow: bool = False
) -> UseCaseJob:
    """The common start of a use-case job ``loom <name>``, in this order: load ``--usecase``; compile it
    (``compiled`` or ``model``); check that ``--model`` names one of its models (``model``: a clear error
    before anything is created); the work paths; point MLflow at their store (``mlflow``).

    Spark starts on the first use of :attr:`UseCaseJob.spark`, so a job can check more first.
    """
    spec = load_usecase(args.usecase)
    plan = _compile(spec) if compiled or model else None
    if plan is not None and model:
        plan.model(args.model)
    work = paths()
    if mlflow:
        from common.runtime.tracking import configure

        configure(work)
    return UseCaseJob(name, args, spec, work, with_model=model, _plan=plan)


def execute(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a job; a :class:`LoomError` becomes one message and exit code 2."""
    setup_logging(getattr(args, "log_level", None))
    try:
        apply_metadata_dir(args)
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
