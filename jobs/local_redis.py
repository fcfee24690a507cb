"""``loom redis start|stop|status``: a long-lived local Redis for CLI jobs.

Jobs run as separate processes (``loom stream`` then ``loom consistency``)
need one server that outlives each of them. With ``REDIS_URL`` set this
command is not needed.
"""

from __future__ import annotations

import argparse

from common.runtime.redis_server import describe, running_local_server, start_persistent, stop_persistent
from common.settings import paths
from jobs.runner import main_for

DESCRIPTION = "Start, stop or show the local Redis server kept under $LOOM_HOME/redis."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status"])


def run(args: argparse.Namespace) -> int:
    home = paths().home
    if args.action == "start":
        print(f"redis: {describe(start_persistent(home))} (data in {home / 'redis'})")
    elif args.action == "stop":
        print("redis: stopped" if stop_persistent(home) else "redis: was not running")
    else:
        url = running_local_server(home)
        print(f"redis: running at {describe(url)}" if url else "redis: not running")
        return 0 if url else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("redis", __import__(__name__)))
