"""Models: the CoLLM composition, its backbone loader, FECE projector and CF models (models/cf/)."""
from .collm import CoLLM
from .collm_build import StageError

__all__ = ["CoLLM", "StageError"]
