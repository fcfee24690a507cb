"""What a Loom notebook starts with: its parameters, Spark, the work area and the use case.

On Databricks the parameters are widgets (``dbutils.widgets``) and ``spark`` is the
cluster's session; elsewhere the parameters have local defaults (overridden by
``loom notebook run --param k=v``) and Spark comes from Loom's session factory.
The first cell of every notebook is::

    nb = notebook(globals(), "02_training", usecase="churn", model="churn", date="now")
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import ConfigError
from common.settings import Paths, paths

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from common.compile.plan import Plan
    from common.spec import UseCase

# key of the dict that `loom notebook run` (common.notebooks.runner) puts into the notebook's globals
RUNNER_KEY = "__loom_notebook__"


def parse_at(text: str) -> datetime:
    """The ``date`` widget: ``now`` (or empty), a day ``YYYY-MM-DD`` (its end: the next midnight, UTC, so the
    whole day counts) or an ISO time (no zone = UTC)."""
    text = text.strip()
    if text in ("", "now"):
        return datetime.now(UTC)
    try:
        day = date.fromisoformat(text)
        return datetime.combine(day + timedelta(days=1), time(), UTC)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"widget date {text[:40]!r} is neither a day nor a time. Fix: write now, 2026-01-15 or 2026-01-15T06:00Z"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _widget_values(namespace: Mapping[str, Any], defaults: Mapping[str, str]) -> dict[str, str]:
    dbutils = namespace.get("dbutils")
    if dbutils is not None and RUNNER_KEY not in namespace:
        values = {}
        for key, default in defaults.items():
            dbutils.widgets.text(key, default, key)
            values[key] = dbutils.widgets.get(key)
        return values
    given = dict(namespace.get(RUNNER_KEY, {}).get("params", {}))
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"--param {unknown[0]}: this notebook has no widget {unknown[0]!r}. Fix: use one of {sorted(defaults)}"
        )
    return {**defaults, **given}


class Notebook:
    """One notebook's parameters and handles; see the module docstring."""

    def __init__(self, namespace: dict[str, Any], name: str, params: dict[str, str]) -> None:
        self.namespace = namespace
        self.name = name
        self.params = params
        self.on_databricks = "dbutils" in namespace and RUNNER_KEY not in namespace

    @property
    def usecase(self) -> str:
        return self.params["usecase"]

    @property
    def model(self) -> str:
        return self.params["model"]

    @cached_property
    def at(self) -> datetime:
        """The ``date`` widget as a time (see :func:`parse_at`)."""
        return parse_at(self.params.get("date", "now"))

    @cached_property
    def work(self) -> Paths:
        """The work area (``$LOOM_HOME``); MLflow points at its store."""
        from common.runtime.tracking import configure

        work = paths()
        configure(work)
        return work

    @cached_property
    def spark(self) -> SparkSession:
        """The cluster's ``spark`` on Databricks; else Loom's session factory (the active session if any)."""
        from common.runtime.spark import build_session

        if self.on_databricks:
            return self.namespace.get("spark") or build_session("databricks")
        return build_session("local", app_name=f"loom-notebook-{self.name}")

    @cached_property
    def spec(self) -> UseCase:
        from common.spec import load_usecase

        return load_usecase(self.usecase)

    @cached_property
    def plan(self) -> Plan:
        from common.compile import compile_usecase

        return compile_usecase(self.spec)

    @cached_property
    def redis_url(self) -> str:
        """``$REDIS_URL``, the `loom redis start` server, or one started for this process."""
        from common.runtime.redis_server import redis_url

        return redis_url(self.work.home)

    @cached_property
    def out(self) -> Path:
        """Folder of the plots this notebook writes: ``$LOOM_HOME/notebooks/<name>`` unless the runner says."""
        folder = self.namespace.get(RUNNER_KEY, {}).get("out")
        folder = Path(folder) if folder else self.work.home / "notebooks" / self.name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def show(self, value: Any, rows: int = 20) -> None:
        """A table: Databricks' ``display`` there; printed here (Spark and pandas frames, anything else)."""
        display = self.namespace.get("display")
        if self.on_databricks and display is not None:
            display(value)
            return
        if hasattr(value, "limit") and hasattr(value, "toPandas"):  # a Spark DataFrame
            value = value.limit(rows).toPandas()
        if hasattr(value, "to_string"):
            import pandas as pd

            with pd.option_context("display.width", 160, "display.max_columns", 30):
                print(value.head(rows).to_string())
            return
        print(value)

    def figure(self, figure: Any, name: str) -> Path:
        """Write a matplotlib figure to ``out/<name>.png`` (and display it on Databricks); returns the file."""
        import matplotlib.pyplot as plt

        path = self.out / f"{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        display = self.namespace.get("display")
        if self.on_databricks and display is not None:
            display(figure)
        plt.close(figure)
        print(f"[plot] {path}")
        return path


def notebook(namespace: dict[str, Any], name: str, **defaults: str) -> Notebook:
    """The notebook's :class:`Notebook`: widgets ``defaults`` (name -> local default) read from Databricks'
    widgets, from ``loom notebook run --param``, or the defaults."""
    import matplotlib

    if "dbutils" not in namespace or RUNNER_KEY in namespace:
        matplotlib.use("Agg")  # headless outside Databricks: plots go to files
    return Notebook(namespace, name, _widget_values(namespace, defaults))
