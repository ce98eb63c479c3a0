"""Collaborative models, one per file, registered under ``cf_model``."""
from . import mf  # noqa: F401  (registers MF)
from .base import CFModel, CFWeightsError

__all__ = ["CFModel", "CFWeightsError"]
