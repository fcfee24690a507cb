"""``loom validate --usecase churn``: load and check the metadata, print a summary."""

from __future__ import annotations

import argparse

from common.spec import load_usecase
from jobs.runner import add_usecase_argument, main_for

DESCRIPTION = "Validate a use case's metadata and print what it defines."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)


def run(args: argparse.Namespace) -> int:
    spec = load_usecase(args.usecase)
    print(f"use case {spec.name} v{spec.version}: OK")
    print(f"  entities: {', '.join(spec.entities)}")
    print(f"  sources: {', '.join(f'{n} ({s.kind}, {len(s.columns)} columns)' for n, s in spec.sources.items())}")
    for name, group in spec.feature_groups.items():
        print(f"  feature group {name}: {len(group.features)} features from {group.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("validate", __import__(__name__)))
