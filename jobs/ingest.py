"""``loom ingest --usecase churn``: landing files -> bronze Delta (PII protected) + quarantine Delta."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.errors import ConfigError
from common.ingest import (
    IngestReport,
    ingest_source,
    render_reports,
    run_until_stopped,
    start_ingest_stream,
    stop_gracefully,
    stop_on_signals,
)
from common.ingest.stream import raise_failure
from common.runtime.spark import build_session
from common.settings import paths
from common.spec import load_usecase
from jobs.runner import add_spark_arguments, add_usecase_argument, main_for

DESCRIPTION = "Ingest landing files into bronze and quarantine Delta tables, once (batch) or continuously (stream)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument(
        "--source", dest="sources", action="append", default=None, help="source to ingest (repeatable; default all)"
    )
    parser.add_argument(
        "--mode", choices=["batch", "stream"], default="batch", help="batch: new files then stop; stream: until stopped"
    )
    parser.add_argument("--trigger-interval", default="10 seconds", help="stream mode: how often to look for files")
    parser.add_argument("--max-files-per-trigger", type=int, default=None, help="cap on files per micro-batch")
    parser.add_argument(
        "--landing", type=Path, default=None, help="landing root (default $LOOM_HOME/landing/<usecase>)"
    )


def run(args: argparse.Namespace) -> int:
    spec = load_usecase(args.usecase)
    names = args.sources or list(spec.sources)
    unknown = [name for name in names if name not in spec.sources]
    if unknown:
        raise ConfigError(f"--source {unknown[0]!r} is not a source of {spec.name!r}. Fix: use {sorted(spec.sources)}")
    from common.privacy import require_keys  # fail on a missing key before Spark starts

    require_keys({name: spec.sources[name] for name in names})
    work = paths()
    spark = build_session(args.profile, app_name=f"loom-ingest-{spec.name}")
    options = {
        "trigger_interval": args.trigger_interval,
        "max_files_per_trigger": args.max_files_per_trigger,
        "landing": args.landing,
    }
    if args.mode == "batch":
        reports = [ingest_source(spark, spec, name, work, "batch", **options) for name in names]
    else:
        reports = [IngestReport(name) for name in names]
        queries = []
        with stop_on_signals() as stop:
            try:
                for report in reports:
                    queries.append(
                        start_ingest_stream(spark, spec, report.source, work, mode="stream", report=report, **options)
                    )
                print(
                    f"streaming {', '.join(names)} every {args.trigger_interval}; Ctrl-C or SIGTERM stops", flush=True
                )
                run_until_stopped(queries, stop)
            finally:
                for query in queries:
                    if query.isActive:
                        stop_gracefully(query)
        for query, report in zip(queries, reports, strict=True):
            raise_failure(query, report, spec)
    print(render_reports(reports))
    for report in reports:
        report.check()
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("ingest", __import__(__name__)))
