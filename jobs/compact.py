"""``loom compact --usecase churn [--group G]``: the offline feature history's off-hot-path upkeep.

The streaming job appends to the history; a key written twice (a late event within the state horizon)
keeps two rows, of which readers take the latest written. This job deletes the superseded rows of the
dates that hold such keys, then runs Delta OPTIMIZE (common/features/compaction.py). Idempotent: run it
nightly (metadata/<usecase>/schedules.yaml) or any time; readers' answers do not change.
"""

from __future__ import annotations

import argparse

from common.features.compaction import compact, compact_groups, render
from jobs.runner import add_spark_arguments, add_usecase_argument, main_for, set_up

DESCRIPTION = (
    "Compact the offline feature history: keep the latest written row of each (entity, feature_ts), "
    "then Delta OPTIMIZE (idempotent; off the streaming hot path)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    add_spark_arguments(parser)
    parser.add_argument("--group", action="append", help="feature group (repeatable; default all)")


def run(args: argparse.Namespace) -> int:
    job = set_up("compact", args, compiled=True)
    groups = [g.name for g in compact_groups(job.plan, args.group)]  # a clear error before Spark starts
    print(render(compact(job.spark, job.work, job.plan, groups)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("compact", __import__(__name__)))
