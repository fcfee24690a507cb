"""``loom generate --usecase churn``: write synthetic landing files (numpy/pandas, no Spark)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.errors import ConfigError
from common.generate import GenerateOptions, generate_landing
from common.settings import paths
from jobs.runner import add_usecase_argument, iso_date, main_for

DESCRIPTION = "Generate seeded synthetic landing files (customers, events, outcomes) with late and malformed records."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    defaults = GenerateOptions()
    parser.add_argument("--customers", type=int, default=defaults.customers, help="number of customers")
    parser.add_argument("--days", type=int, default=defaults.days, help="simulated days of events")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (same seed, same files)")
    parser.add_argument("--start", type=iso_date, default=defaults.start, help="first simulated day, YYYY-MM-DD")
    parser.add_argument("--malformed-rate", type=float, default=defaults.malformed_rate, help="share of bad records")
    parser.add_argument("--late-rate", type=float, default=defaults.late_rate, help="share of late events")
    parser.add_argument("--events-per-day", type=float, default=defaults.events_per_day, help="per active customer")
    parser.add_argument("--rows-per-file", type=int, default=defaults.rows_per_file, help="largest file, in rows")
    parser.add_argument(
        "--drift-at", type=iso_date, default=None, help="the world changes from this day on (YYYY-MM-DD; default never)"
    )
    parser.add_argument("--out", type=Path, default=None, help="landing root (default $LOOM_HOME/landing/<usecase>)")
    parser.add_argument("--overwrite", action="store_true", help="delete files already in the source folders")


def run(args: argparse.Namespace) -> int:
    options = GenerateOptions(
        customers=args.customers,
        days=args.days,
        seed=args.seed,
        start=args.start,
        malformed_rate=args.malformed_rate,
        late_rate=args.late_rate,
        events_per_day=args.events_per_day,
        rows_per_file=args.rows_per_file,
        drift_at=args.drift_at,
    )
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a file. Fix: pass a folder")
    summary = generate_landing(args.usecase, paths(), options, out=args.out, overwrite=args.overwrite)
    print(summary.render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("generate", __import__(__name__)))
