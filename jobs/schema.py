"""``loom schema``: print or write the JSON Schema of the metadata."""

from __future__ import annotations

import argparse

from common.spec.schema import SCHEMA_PATH, is_stale, schema_text, write_schema
from jobs.runner import main_for

DESCRIPTION = "Print the metadata JSON Schema, write it to metadata/schema.json, or check it is current."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {SCHEMA_PATH.name}")
    group.add_argument("--check", action="store_true", help="exit 1 when the committed schema is stale")


def run(args: argparse.Namespace) -> int:
    if args.write:
        print(f"wrote {write_schema()}")
        return 0
    if args.check:
        if is_stale():
            print(f"{SCHEMA_PATH} is stale. Fix: loom schema --write")
            return 1
        print(f"{SCHEMA_PATH} is current")
        return 0
    print(schema_text(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_for("schema", __import__(__name__)))
