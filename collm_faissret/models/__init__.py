"""Models: the CoLLM composition, its backbone loader, FECE projector and CF models."""
from . import cf  # noqa: F401  (registers the CF models)
from .collm import CoLLM, StageError, build_collm

__all__ = ["CoLLM", "StageError", "build_collm"]
