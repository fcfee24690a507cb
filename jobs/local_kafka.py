"""``loom kafka start|stop|status``: a long-lived local Kafka broker for CLI jobs.

Jobs run as separate processes (``loom generate --to kafka`` then ``loom stream``) need one broker
that outlives each of them. With ``LOOM_KAFKA_BOOTSTRAP`` set this command is not needed.
"""

from __future__ import annotations

import argparse
import os

from common.runtime.kafka_server import BOOTSTRAP_ENV, running_local_broker, start_persistent, stop_persistent
from common.settings import paths
from jobs.runner import main_for

DESCRIPTION = "Start, stop or show the local Kafka broker (KRaft, 127.0.0.1) kept under $LOOM_HOME/kafka."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status"])


def run(args: argparse.Namespace) -> int:
    home = paths().home
    if args.action == "start":
        bootstrap = start_persistent(home)
        print(f"kafka: running at {bootstrap} (data in {home / 'kafka'})")
        print(f"{BOOTSTRAP_ENV}={bootstrap}")
        configured = os.environ.get(BOOTSTRAP_ENV)
        if configured and configured != bootstrap:
            print(f"note: {BOOTSTRAP_ENV} is set to {configured} here: jobs use that cluster, not this broker")
    elif args.action == "stop":
        print("kafka: stopped" if stop_persistent(home) else "kafka: was not running")
    else:
        bootstrap = running_local_broker(home)
        print(f"kafka: running at {bootstrap}" if bootstrap else "kafka: not running")
        if bootstrap:
            print(f"{BOOTSTRAP_ENV}={bootstrap}")
        return 0 if bootstrap else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("kafka", __import__(__name__)))
