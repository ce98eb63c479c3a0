"""Interaction data sets: loaders registered by name (the key under ``datasets:`` in a config)."""
from ..errors import DataError
from ..registry import register
from .collm_data import InteractionData, load_interactions
from .rec_dataset import RecRows, collate


def load_collm_splits(ds_cfg) -> InteractionData:
    """A CoLLM-format data directory (``datasets.<name>.path``) -> its train/valid/test splits."""
    files = {"train": ds_cfg.train_file, "valid": ds_cfg.valid_file, "test": ds_cfg.test_file}
    return load_interactions(ds_cfg.path, files)


# The seed's dataset names, plus the embedded demo's; the format is the same.
for _name in ("movielens_ood", "amazon_ood", "bookcrossing_ood", "ml100k_ood"):
    register("dataset", _name)(load_collm_splits)

__all__ = ["DataError", "InteractionData", "RecRows", "collate", "load_collm_splits", "load_interactions"]
