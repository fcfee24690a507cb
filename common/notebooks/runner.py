"""Run a Databricks source notebook locally, cell by cell, in this process.

Python cells run in order in one namespace, as on a cluster; markdown and ``%pip``
cells are skipped (the local environment has the packages). The first cell that
raises stops the run with a :class:`NotebookCellError` naming the notebook, the cell
number, its line in the file and the error. Tracebacks point at the notebook's
own lines: each cell is compiled with the file's name and line offset.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError, LoomError
from common.notebooks.context import RUNNER_KEY
from common.notebooks.source import SKIPPED_MAGICS, Cell, parse_notebook


class NotebookCellError(LoomError):
    """A cell of a notebook failed; the message names the notebook, the cell and the error."""

    def __init__(self, notebook: str, cell: Cell, line: int, error: BaseException) -> None:
        self.notebook, self.cell, self.line, self.error = notebook, cell, line, error
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if isinstance(error, LoomError):  # Loom's own message already says what to fix
            text = detail
        else:
            text = f"{type(error).__name__}: {detail[:500]}. Fix: correct the cell (or its parameters) and run again"
        super().__init__(f"{notebook}: cell {cell.number} (line {line}) failed: {text}")


@dataclass
class NotebookRun:
    """What a run executed: the notebook, its cells run and skipped, the namespace after the last cell."""

    path: Path
    ran: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: dict[int, float] = field(default_factory=dict)
    namespace: dict[str, Any] = field(default_factory=dict)


def _failing_line(error: BaseException, filename: str, cell: Cell) -> int:
    """The deepest line of the notebook file in the error's traceback (the cell's first line otherwise)."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == filename]
    return lines[-1] if lines and lines[-1] else cell.line


def parse_params(items: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` (``--param``) -> dict; a clear error for an item without ``=``."""
    params: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {item[:60]!r} is not key=value. Fix: write e.g. --param model=churn")
        params[key.strip()] = value
    return params


def run_notebook(
    path: str | Path,
    params: Mapping[str, str] | None = None,
    *,
    out: str | Path | None = None,
    namespace: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> NotebookRun:
    """Run every Python cell of the notebook at ``path`` in order, in one fresh namespace.

    ``params`` override the notebook's widget defaults; ``out`` is where its plots go
    (default ``$LOOM_HOME/notebooks/<name>``); ``namespace`` adds globals. Raises
    :class:`NotebookCellError` at the first failing cell.
    """
    path = Path(path)
    cells = parse_notebook(path)
    filename = str(path.resolve())
    run = NotebookRun(path)
    run.namespace = {
        "__name__": "__main__",
        "__file__": filename,
        **(namespace or {}),
        RUNNER_KEY: {"params": dict(params or {}), "out": str(out) if out else None},
    }
    say = progress or (lambda text: None)
    for cell in cells:
        if cell.kind != "python":
            if cell.magic not in SKIPPED_MAGICS:
                raise NotebookCellError(
                    path.name, cell, cell.line, ConfigError(f"magic {cell.magic} cannot run outside Databricks")
                )
            run.skipped.append(cell.number)
            if cell.kind == "markdown" and cell.title:
                say(f"## {cell.title}")
            continue
        say(f"-- cell {cell.number}/{len(cells)} (line {cell.line})")
        # pad with newlines so that tracebacks and line numbers are the file's own
        code = compile("\n" * (cell.line - 1) + cell.source, filename, "exec")
        started = time.monotonic()
        try:
            exec(code, run.namespace)  # running the notebook is the point
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # any failure of the notebook stops the run here
            if isinstance(error, SystemExit) and not error.code:
                raise
            raise NotebookCellError(path.name, cell, _failing_line(error, filename, cell), error) from error
        finally:
            sys.stdout.flush()
        run.seconds[cell.number] = time.monotonic() - started
        run.ran.append(cell.number)
    return run
