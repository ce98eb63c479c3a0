"""Interaction data sets, registered by name (the key under ``datasets:`` in a config)."""
from ..registry import register
from .collm_data import DataError, InteractionData, load_interactions
from .rec_dataset import RecRows, collate


class CollmInteractions:
    """A CoLLM-format data directory; ``load(cfg)`` returns its splits."""

    @classmethod
    def load(cls, ds_cfg) -> InteractionData:
        files = {"train": ds_cfg.train_file, "valid": ds_cfg.valid_file, "test": ds_cfg.test_file}
        return load_interactions(ds_cfg.path, files)


# The seed's dataset names, plus the embedded demo's; the format is the same.
for _name in ("movielens_ood", "amazon_ood", "bookcrossing_ood", "ml100k_ood"):
    register("dataset", _name)(type(_name, (CollmInteractions,), {}))

__all__ = ["DataError", "InteractionData", "RecRows", "collate", "load_interactions", "CollmInteractions"]
