"""Loom: operationalize ML models from metadata.

The library is organised in one-way phases: ``spec`` (load and validate
metadata) -> ``compile`` (plans of pure DataFrame functions) -> stores and
engines that execute them. Nothing in ``common`` imports ``jobs``.
"""

__version__ = "0.1.0"
