"""Collaborative models, one per file, registered under ``cf_model``."""
from . import din, lightgcn, mf, personalized_prompt, sasrec, soft_prompt  # noqa: F401  (fill the registry)
from .base import CFModel, CFWeightsError

__all__ = ["CFModel", "CFWeightsError"]
