"""Phase 3: spec -> plan of pure DataFrame functions (see :mod:`common.compile.plan`)."""

from common.compile.plan import GroupPlan, Plan, compile_usecase

__all__ = ["GroupPlan", "Plan", "compile_usecase"]
