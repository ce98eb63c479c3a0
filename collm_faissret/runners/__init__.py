"""Runners and learning-rate schedules, registered by name."""
from . import lr_sched  # noqa: F401  (registers the schedules)
from .run_files import RunError
from .runner_base import RunnerBase

__all__ = ["RunError", "RunnerBase"]
