"""Collaborative models, one per file, registered under ``cf_model``; ``build_cf`` makes them.

Next to them, the wrapper that gives cold users/items borrowed vectors
(cold_start.py) and the title vectors it compares items by (text.py).
"""
from . import din, lightgcn, mf, personalized_prompt, sasrec, soft_prompt  # noqa: F401  (fill the registry)
from .base import CFConfig, CFModel, CFWeightsError
from .factory import build_cf, cold_start_view

__all__ = ["CFConfig", "CFModel", "CFWeightsError", "build_cf", "cold_start_view"]
