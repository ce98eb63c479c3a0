"""What a trained run recommends: ``Recommender`` (recommender.py) ranks a user's top-K items
from a run directory (run_dir.py), Faiss retrieval then the LLM; catalog.py turns users and
histories into requests, new_users.py serves users known only by a history. The command
``collm-recommend`` (recommend_cli.py) prints its lists.
"""
from .errors import RecommendError
from .recommender import COLUMNS, Recommender, check_sizes

__all__ = ["COLUMNS", "RecommendError", "Recommender", "check_sizes"]
