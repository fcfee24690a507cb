"""Synthetic landing data per use case, written with numpy/pandas only (no Spark).

``GENERATORS`` maps a use case name to the module that generates its data; the
module provides ``generate(spec, out, options, *, overwrite) -> GenerateSummary``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from common.errors import ConfigError
from common.generate.landing import read_malformed_log
from common.generate.options import GenerateOptions, GenerateSummary
from common.settings import Paths
from common.spec import UseCase, load_usecase

GENERATORS: dict[str, str] = {
    "churn": "common.generate.churn",
    "telco": "common.generate.telco",
}

__all__ = ["GENERATORS", "GenerateOptions", "GenerateSummary", "generate_landing", "read_malformed_log"]


def generate_landing(
    usecase: str | UseCase,
    work: Paths,
    options: GenerateOptions,
    *,
    out: Path | None = None,
    overwrite: bool = False,
) -> GenerateSummary:
    """Generate ``usecase``'s landing files into ``out`` (default ``work.landing / <usecase>``).

    ``out`` plays the role of ``{landing}`` in the sources' paths, so ingesting
    with the same landing root reads exactly these files.
    """
    spec = usecase if isinstance(usecase, UseCase) else load_usecase(usecase)
    module_name = GENERATORS.get(spec.name)
    if module_name is None:
        raise ConfigError(
            f"there is no data generator for use case {spec.name!r}. "
            f"Fix: use one of {sorted(GENERATORS)} or add a module to common.generate.GENERATORS"
        )
    module = importlib.import_module(module_name)
    target = Path(out) if out is not None else work.landing / spec.name
    return module.generate(spec, target, options, overwrite=overwrite)
