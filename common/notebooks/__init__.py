"""Databricks-style notebooks: the format (:mod:`~common.notebooks.source`), what a notebook
starts with (:mod:`~common.notebooks.context`: widgets, Spark, work area) and the local
runner (:mod:`~common.notebooks.runner`, ``loom notebook run``)."""

from common.notebooks.context import Notebook, notebook, parse_at
from common.notebooks.runner import NotebookCellError, NotebookRun, parse_params, run_notebook
from common.notebooks.source import Cell, NotebookFormatError, parse_notebook, parse_source

__all__ = [
    "Cell",
    "Notebook",
    "NotebookCellError",
    "NotebookFormatError",
    "NotebookRun",
    "notebook",
    "parse_at",
    "parse_notebook",
    "parse_params",
    "parse_source",
    "run_notebook",
]
