"""Collaborative models, one per file, registered under ``cf_model``."""
from . import din, lightgcn, mf, sasrec  # noqa: F401  (register DIN, LightGCN, MF, SASRec)
from .base import CFModel, CFWeightsError

__all__ = ["CFModel", "CFWeightsError"]
