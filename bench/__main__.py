"""``python -m bench``: run the benchmarks, print a table, optionally write JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import discover, format_table, run_benchmarks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.list:
        for name, module in discover().items():
            print(f"{name}: {(module.__doc__ or '').strip().splitlines()[0] if module.__doc__ else ''}")
        return 0
    rows = run_benchmarks(args.only, quick=args.quick)
    print(format_table(rows))
    document = json.dumps(rows, indent=2, default=str)
    print(document)
    if args.json:
        Path(args.json).write_text(document + "\n")
    return 1 if args.strict and any(row.get("met") is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
