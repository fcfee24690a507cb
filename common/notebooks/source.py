"""Databricks source notebooks (``.py``): parse them into cells and check the format.

The format, as Databricks exports it: the first line is ``# Databricks notebook source``;
cells are separated by a line ``# COMMAND ----------`` (with a blank line on each side);
a cell whose every line starts with ``# MAGIC`` is a magic cell, e.g. markdown when its
first line is ``# MAGIC %md``. Anything else is a Python cell.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.errors import ConfigError

HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"
MAGIC = "# MAGIC"
# magics a local run may skip: documentation and installs (the local venv has the packages)
SKIPPED_MAGICS = ("%md", "%md-sandbox", "%pip")

CellKind = Literal["python", "markdown", "magic"]


class NotebookFormatError(ConfigError):
    """A file that is not a valid Databricks source notebook."""


@dataclass(frozen=True)
class Cell:
    """One cell: its number (1-based), kind, first line in the file and text (MAGIC prefixes removed)."""

    number: int
    kind: CellKind
    line: int
    source: str

    @property
    def magic(self) -> str | None:
        """``%md``, ``%pip``, ... for a magic or markdown cell."""
        if self.kind == "python":
            return None
        return self.source.split(None, 1)[0] if self.source.strip() else None

    @property
    def title(self) -> str:
        """The first heading of a markdown cell, else its first non-empty line (for progress output)."""
        for text in self.source.splitlines():
            text = text.strip()
            if text and not text.startswith("%"):
                return text.lstrip("#").strip()
        return ""


def _unmagic(line: str) -> str:
    # "# MAGIC" alone is an empty line; "# MAGIC text" carries text after one space
    rest = line[len(MAGIC) :]
    return rest[1:] if rest.startswith(" ") else rest


def _cell(number: int, first_line: int, lines: list[str], name: str) -> Cell:
    # blank lines around a separator belong to the separator, not to the cell
    while lines and not lines[0].strip():
        lines, first_line = lines[1:], first_line + 1
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    if not lines:
        raise NotebookFormatError(
            f"{name}: cell {number} (line {first_line}) is empty. Fix: delete the extra '{SEPARATOR}' line"
        )
    magic = [line.startswith(MAGIC) for line in lines]
    if any(magic) and not all(magic):
        bad = lines[magic.index(False)] if magic[0] else lines[magic.index(True)]
        raise NotebookFormatError(
            f"{name}: cell {number} (line {first_line}) mixes '# MAGIC' lines and Python ({bad[:60]!r}). "
            f"Fix: prefix every line of a magic cell with '# MAGIC ', or split the cell with '{SEPARATOR}'"
        )
    if not all(magic):
        return Cell(number, "python", first_line, "\n".join(lines))
    text = "\n".join(_unmagic(line) for line in lines)
    head = text.lstrip().split(None, 1)[0] if text.strip() else ""
    if not head.startswith("%"):
        raise NotebookFormatError(
            f"{name}: cell {number} (line {first_line}) is a '# MAGIC' cell without a magic command "
            f"(got {head[:30]!r}). Fix: start it with '# MAGIC %md' (markdown) or another magic such as %pip"
        )
    if head.startswith("%md") and not text.strip()[len(head) :].strip():
        raise NotebookFormatError(f"{name}: markdown cell {number} (line {first_line}) has no text. Fix: write some")
    return Cell(number, "markdown" if head.startswith("%md") else "magic", first_line, text)


def parse_source(text: str, name: str = "<notebook>") -> list[Cell]:
    """The cells of a Databricks source notebook; :class:`NotebookFormatError` names the cell and the fix."""
    lines = text.splitlines()
    if not lines or lines[0].rstrip() != HEADER:
        got = repr(lines[0][:60]) if lines else "an empty file"
        raise NotebookFormatError(
            f"{name}: line 1 is {got}; a Databricks source notebook starts with {HEADER!r}. Fix: make it the first line"
        )
    cells: list[Cell] = []
    chunk: list[str] = []
    start = 2
    for number, line in enumerate(lines[1:], start=2):
        if line.strip().startswith("# COMMAND") and line.rstrip() != SEPARATOR:
            raise NotebookFormatError(
                f"{name}: line {number} is {line.strip()[:60]!r}, not a cell separator. Fix: write {SEPARATOR!r}"
            )
        if line.rstrip() == SEPARATOR:
            cells.append(_cell(len(cells) + 1, start, chunk, name))
            chunk, start = [], number + 1
        else:
            chunk.append(line)
    cells.append(_cell(len(cells) + 1, start, chunk, name))
    for cell in cells:
        if cell.kind == "python":
            try:
                ast.parse(cell.source)
            except SyntaxError as err:
                line = cell.line + (err.lineno or 1) - 1
                raise NotebookFormatError(
                    f"{name}: cell {cell.number} (line {line}) is not valid Python: {err.msg}. Fix: correct it"
                ) from None
    return cells


def parse_notebook(path: str | Path) -> list[Cell]:
    """Read and parse ``path`` (see :func:`parse_source`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"notebook {path} does not exist. Fix: pass a .py file under notebooks/")
    return parse_source(path.read_text(encoding="utf-8"), path.name)
