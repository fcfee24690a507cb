"""``loom validate --usecase churn``: load and check the metadata, compile the plan, print a summary.

Compiling is part of validating: a spec whose plan is wrong (a transform cycle, an unknown SQL
column, raw PII reaching a feature, a schedule that never fires) fails here with exit code 2
and the same one-message error every job would give, instead of passing and failing in every job.
"""

from __future__ import annotations

import argparse

from common.compile import compile_usecase
from common.spec import load_usecase
from common.spec.schedules import usecase_schedules
from jobs.runner import add_usecase_argument, main_for

DESCRIPTION = "Validate a use case's metadata and print what it defines."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)


def run(args: argparse.Namespace) -> int:
    spec = load_usecase(args.usecase)
    plan = compile_usecase(spec)
    schedules = usecase_schedules(spec)
    print(f"use case {spec.name} v{spec.version}: OK")
    print(f"  entities: {', '.join(spec.entities)}")
    print(f"  sources: {', '.join(f'{n} ({s.kind}, {len(s.columns)} columns)' for n, s in spec.sources.items())}")
    for name, group in spec.feature_groups.items():
        print(f"  feature group {name}: {len(group.features)} features from {group.source}")
    print(f"  models: {', '.join(plan.models) or '-'}; schedules: {', '.join(schedules) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("validate", __import__(__name__)))
