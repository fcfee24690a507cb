"""Loom benchmarks: ``python -m bench [--only NAME] [--quick] [--json PATH]``.

A benchmark is a module ``bench/bench_<something>.py`` with

* ``NAME: str``, the name ``--only`` selects;
* ``run(quick: bool) -> list[dict]``, rows with ``metric``, ``value``, ``unit``
  and ``target`` (text such as ``">= 100000"`` or ``"<= 2.5"``, or None).

Targets written as ``>= N`` or ``<= N`` are checked and shown as met or missed.
Benchmarks are measurements, not tests: they never run under pytest.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

_TARGET = re.compile(r"^\s*(>=|<=|≥|≤)\s*([-+0-9.eE]+)\s*$")


def machine_load_row(note: str = "") -> dict[str, Any]:
    """A row with the 1-minute load average at start: the machine is shared, so read the figures with it.

    ``note`` follows the core count in the row's note.
    """
    return {
        "metric": "machine load, 1-min average at start",
        "value": round(os.getloadavg()[0], 2),
        "unit": "runnable",
        "target": None,
        "note": f"{os.cpu_count()} cores{note}",
    }


@contextmanager
def local_spark(name: str) -> Iterator[Any]:
    """A Spark session of the ``local`` profile named ``loom-bench-<name>``, stopped at the end of the block."""
    from common.runtime.spark import build_session

    spark = build_session("local", app_name=f"loom-bench-{name}")
    try:
        yield spark
    finally:
        spark.stop()


def throwaway_keys() -> None:
    """Random PII keys for this process when none are configured: benchmark data is synthetic."""
    import base64
    import secrets

    os.environ.setdefault("LOOM_KEY_PII_HMAC", base64.b64encode(secrets.token_bytes(32)).decode())
    os.environ.setdefault("LOOM_KEY_PII_ENCRYPTION", base64.b64encode(secrets.token_bytes(32)).decode())


def discover() -> dict[str, ModuleType]:
    """Benchmark name -> module, for every ``bench/bench_*.py``."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name.startswith("bench_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            found[module.NAME] = module
    return dict(sorted(found.items()))


def target_met(value: Any, target: str | None) -> bool | None:
    """True/False when ``target`` is ``>= N`` or ``<= N`` and value is a number; else None."""
    match = _TARGET.match(target or "")
    if match is None or not isinstance(value, int | float):
        return None
    bound = float(match.group(2))
    return value >= bound if match.group(1) in (">=", "≥") else value <= bound


def run_benchmarks(only: list[str] | None = None, quick: bool = False) -> list[dict[str, Any]]:
    """Run the selected benchmarks; every row gets ``bench`` and ``met`` fields."""
    available = discover()
    unknown = sorted(set(only or []) - set(available))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; known: {sorted(available)}")
    rows: list[dict[str, Any]] = []
    for name, module in available.items():
        if only and name not in only:
            continue
        for row in module.run(quick):
            rows.append({"bench": name, **row, "met": target_met(row.get("value"), row.get("target"))})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the rows."""
    header = ["bench", "metric", "value", "unit", "target", "met"]
    cells = [header]
    for row in rows:
        value = row.get("value")
        shown = f"{value:,.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else f"{value}"
        met = {True: "yes", False: "NO", None: ""}[row.get("met")]
        cells.append(
            [
                str(row.get("bench", "")),
                str(row.get("metric", "")),
                shown,
                str(row.get("unit", "")),
                str(row.get("target") or ""),
                met,
            ]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i != 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
