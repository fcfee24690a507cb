"""The ``loom`` console script: ``loom <job> [options]``."""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Sequence

from jobs.runner import execute

# job name on the command line -> module in jobs/ (kept explicit: it is the CLI contract)
JOBS: dict[str, str] = {
    "smoke": "jobs.smoke",
    "demo": "jobs.demo",
    "validate": "jobs.validate",
    "schema": "jobs.schema",
    "redis": "jobs.local_redis",
    "kafka": "jobs.local_kafka",
    "cluster": "jobs.local_cluster",
    "generate": "jobs.generate",
    "ingest": "jobs.ingest",
    "backfill": "jobs.backfill",
    "compact": "jobs.compact",
    "materialize": "jobs.materialize",
    "stream": "jobs.stream",
    "consistency": "jobs.consistency",
    "train": "jobs.train",
    "score": "jobs.score",
    "rollback": "jobs.rollback",
    "schedule": "jobs.schedule",
    "serve": "jobs.serve",
    "evaluate": "jobs.evaluate",
    "retrain": "jobs.retrain",
    "forget": "jobs.forget",
    "audit-pii": "jobs.audit_pii",
    "privacy-report": "jobs.privacy_report",
    "notebook": "jobs.notebook_run",
}


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    """The parser of every job (built once per process: it imports every job module)."""
    parser = argparse.ArgumentParser(prog="loom", description="Operationalize ML models from metadata.")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING or ERROR")
    sub = parser.add_subparsers(dest="job", metavar="<job>", required=True)
    for name, module_name in JOBS.items():
        module = importlib.import_module(module_name)
        job_parser = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        job_parser.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        module.add_arguments(job_parser)
        job_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return execute(args.job, args._run, args)


if __name__ == "__main__":
    sys.exit(main())
