"""Phase 1: load and validate metadata into an immutable, typed spec.

Nothing here touches Spark, Redis or MLflow. ``load_usecase`` is the entry point.
"""

from common.spec.loader import load_usecase, usecase_dir
from common.spec.usecase import UseCase

__all__ = ["UseCase", "load_usecase", "usecase_dir"]
