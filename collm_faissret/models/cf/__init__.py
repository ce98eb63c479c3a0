"""Collaborative models, one per file, registered under ``cf_model``; ``build_cf`` makes them.

Next to them, the wrapper that gives cold users/items borrowed vectors
(cold_start.py), its ``model.cold_start`` settings (cold_start_config.py) and the
arithmetic it borrows them with (borrowing.py), the
title vectors it compares items by (text.py) and the weight file a trained
model is saved in (weights.py).
"""
from . import din, lightgcn, mf, personalized_prompt, sasrec, soft_prompt  # noqa: F401  (the built-in models)
from .base import CFConfig, CFModel
from .factory import attach_scoring_view, build_cf, cold_start_view
from .weights import CFWeightsError, read_cf_weights

__all__ = ["CFConfig", "CFModel", "CFWeightsError", "attach_scoring_view", "build_cf", "cold_start_view",
           "read_cf_weights"]
