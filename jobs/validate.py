"""``loom validate --usecase churn``: load and check the metadata, compile the plan, print a summary.

Compiling is part of validating: a spec whose plan is wrong (a transform cycle, an unknown SQL
column, a feature reading a column no transform produces, clashing names, an on-demand output named
like a feature, raw PII reaching a feature, a schedule that never fires) fails here with exit code 2,
listing every problem with its file, path, value and fix (stdout; the error message on stderr lists the
first few and counts the rest), instead of passing and failing in a later job.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.compile import compile_usecase
from common.errors import SpecErrors
from common.spec import load_usecase
from common.spec.schedules import usecase_schedules
from jobs.runner import add_usecase_argument, main_for

DESCRIPTION = "Validate a use case's metadata and print what it defines."
MAX_PRINTED = 1000
"""Most problems listed one by one (hostile metadata may hold many more)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)


def run(args: argparse.Namespace) -> int:
    try:
        spec = load_usecase(args.usecase)
        plan = compile_usecase(spec)
    except SpecErrors as err:
        # Every problem on stdout, one line each with its file, path, value and fix; the error message
        # itself (stderr, exit 2) stays one short message under 1 KB that lists the first few.
        print(f"{len(err.errors)} problems in the metadata:")
        for problem in err.errors[:MAX_PRINTED]:
            print(f"  - {problem}")
        if len(err.errors) > MAX_PRINTED:
            print(f"  ... and {len(err.errors) - MAX_PRINTED} more")
        raise
    schedules = usecase_schedules(spec)
    print(f"use case {spec.name} v{spec.version}: OK")
    origin = spec.file_of("name")
    if origin:
        print(f"  metadata: {Path(origin).parent}")
    print(f"  entities: {', '.join(spec.entities)}")
    print(f"  sources: {', '.join(f'{n} ({s.kind}, {len(s.columns)} columns)' for n, s in spec.sources.items())}")
    for name, group in spec.feature_groups.items():
        print(f"  feature group {name}: {len(group.features)} features from {group.source}")
    print(f"  models: {', '.join(plan.models) or '-'}; schedules: {', '.join(schedules) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("validate", __import__(__name__)))
