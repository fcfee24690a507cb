"""``loom generate --usecase churn``: write synthetic landing files (numpy/pandas, no Spark).

``--to kafka`` also publishes the events sources to Kafka (``common.generate.to_kafka``): a
``format: kafka`` source that names its own ``bootstrap_env`` to that variable's cluster; every other
source to ``$LOOM_KAFKA_BOOTSTRAP``, else the broker of ``loom kafka start``, else a broker of this
command (data in ``$LOOM_HOME/kafka``, stopped at its end). ``--rate N`` replays them at N events per second.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from common.errors import ConfigError
from common.generate import GenerateOptions, generate_landing
from common.generate.to_kafka import publish, sources_by_cluster
from common.runtime.kafka_server import BOOTSTRAP_ENV, kafka_bootstrap, running_local_broker
from common.settings import paths
from common.spec import load_usecase
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
    parser.add_argument(
        "--to",
        choices=["files", "kafka"],
        default="files",
        help="files: landing files only (default); kafka: also publish the events sources to loom.<usecase>.<source>",
    )
    parser.add_argument("--rate", type=float, default=None, help="with --to kafka: events per second (default: max)")
    parser.add_argument("--partitions", type=int, default=2, help="with --to kafka: partitions of a new topic")


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
    if args.to != "kafka" and (args.rate is not None or args.partitions != 2):
        raise ConfigError("--rate and --partitions apply to Kafka only. Fix: add --to kafka, or drop them")
    if args.rate is not None and not args.rate > 0:
        raise ConfigError(f"--rate {args.rate!r} is not a positive number of events per second. Fix: e.g. --rate 1000")
    if args.partitions < 1:
        raise ConfigError(f"--partitions {args.partitions!r} must be at least 1. Fix: e.g. --partitions 2")
    work = paths()
    spec = load_usecase(args.usecase)
    summary = generate_landing(spec, work, options, out=args.out, overwrite=args.overwrite)
    print(summary.render())
    if args.to == "kafka":
        out = args.out if args.out is not None else work.landing / spec.name
        for bootstrap, names in sources_by_cluster(spec, lambda: _default_bootstrap(work.home)).items():
            summary = publish(spec, out, bootstrap, rate=args.rate, partitions=args.partitions, sources=names)
            print(summary.render())
    return 0


def _default_bootstrap(home: Path) -> str:
    """``$LOOM_KAFKA_BOOTSTRAP``, else the broker of ``loom kafka start``, else one started for this command."""
    own = not os.environ.get(BOOTSTRAP_ENV) and running_local_broker(home) is None
    bootstrap = kafka_bootstrap(home)
    if own:
        print(f"kafka: started a broker for this command at {bootstrap}; `loom kafka start` keeps one running")
    return bootstrap


if __name__ == "__main__":
    raise SystemExit(main_for("generate", __import__(__name__)))
