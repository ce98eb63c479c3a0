"""Runners and learning-rate schedules, registered by name."""
from . import lr_sched  # noqa: F401  (registers the schedules)
from .runner_base import RunError, RunnerBase

__all__ = ["RunError", "RunnerBase"]
