"""``loom rollback --usecase churn --model churn``: move @champion back to the previous champion."""

from __future__ import annotations

import argparse

from jobs.runner import add_usecase_argument, main_for, set_up

DESCRIPTION = "Move a model's @champion alias back to the version that held it before; the registry records it."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_usecase_argument(parser)
    parser.add_argument("--model", required=True, help="registered model name, e.g. churn")


def run(args: argparse.Namespace) -> int:
    from common.models.registry import rollback

    set_up("rollback", args, model=True)
    move = rollback(args.model)
    print(move.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("rollback", __import__(__name__)))
