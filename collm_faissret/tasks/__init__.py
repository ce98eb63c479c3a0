"""Tasks, registered under ``task``."""
from .rec_task import CFTask, RecTask

__all__ = ["CFTask", "RecTask"]
