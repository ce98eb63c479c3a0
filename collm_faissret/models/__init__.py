"""Models: the CoLLM composition, its backbone loader, FECE projector and CF models (models/cf/)."""
from .collm import CoLLM, build_collm
from .collm_build import StageError

__all__ = ["CoLLM", "StageError", "build_collm"]
