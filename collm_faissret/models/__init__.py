"""Models: the CoLLM composition, its backbone loader, FECE projector and CF models (models/cf/)."""
from .collm import CoLLM, StageError, build_collm

__all__ = ["CoLLM", "StageError", "build_collm"]
