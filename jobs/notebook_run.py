"""``loom notebook run notebooks/02_training.py [--param k=v]``: run a Databricks source notebook
locally, cell by cell, in this process; the first failing cell stops it with its number and error."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jobs.runner import main_for

DESCRIPTION = "Run a Databricks source notebook locally, cell by cell (stops at the first failing cell)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    run = actions.add_parser("run", help="run a notebook locally", description="Run a notebook locally, cell by cell.")
    run.add_argument("path", type=Path, help="the notebook, e.g. notebooks/02_training.py")
    run.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a widget (usecase, model, date); repeatable",
    )
    run.add_argument(
        "--out", type=Path, default=None, help="folder for the plots (default $LOOM_HOME/notebooks/<name>)"
    )


def run(args: argparse.Namespace) -> int:
    from common.notebooks import parse_params, run_notebook

    params = parse_params(args.params)  # a clear error before anything runs
    started = time.monotonic()
    done = run_notebook(args.path, params, out=args.out, progress=lambda text: print(text, flush=True))
    print(
        f"notebook {args.path.name}: {len(done.ran)} cells ran, {len(done.skipped)} markdown/magic cells skipped, "
        f"{time.monotonic() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("notebook", __import__(__name__)))
