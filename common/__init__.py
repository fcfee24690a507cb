"""Loom: operationalize ML models from metadata.

The library is organised in one-way phases: ``spec`` (load and validate
metadata) -> ``compile`` (plans of pure DataFrame functions) -> stores and
engines that execute them. A package imports only the packages below it; the
order is written once, in pyproject.toml (``[tool.importlinter]``), and
tests/test_package_order.py checks it. Nothing in ``common`` imports ``jobs``.
"""

__version__ = "0.1.0"
