"""Tasks, registered under ``task``."""
from .rec_task import CFTask, RecTask
from .retrieve_rank import RetrieveRankTask

__all__ = ["CFTask", "RecTask", "RetrieveRankTask"]
