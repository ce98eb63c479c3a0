"""CoLLM-format interaction splits: loading and validation.

Reads CoLLM's ``<split>_ood2.pkl`` DataFrames as they are on users' disks, or
the Parquet twin our data scripts can write (``<split>_ood2.parquet``, tried
first). Pickles run code when loaded: they are read only from the directory
the config names.
"""
import os
from dataclasses import dataclass
from typing import Dict

import numpy as np
import pandas as pd

from ..errors import DataError

REQUIRED_COLUMNS = ("uid", "iid", "label", "his", "his_title", "title", "not_cold")


def _read(path_dir: str, stem: str) -> (pd.DataFrame, str):
    for ext, reader in ((".parquet", pd.read_parquet), (".pkl", pd.read_pickle)):
        path = os.path.join(path_dir, stem + ext)
        if os.path.isfile(path):
            try:
                return reader(path), path
            except (OSError, ValueError, EOFError, ImportError) as err:
                raise DataError(f"{path}: cannot read: {err}") from None
    raise DataError(f"data file not found: {os.path.join(path_dir, stem)}.pkl (or .parquet)")


def clean_history(his, his_title):
    """CoLLM's lists carry a leading 0 / '' pad; return (ids, titles) without it, oldest first."""
    ids = [int(i) for i in his if int(i) != 0]
    titles = [str(t) for t in his_title if str(t) != ""]
    return ids, titles


def validate(df: pd.DataFrame, path: str) -> pd.DataFrame:
    """Check columns, emptiness, labels and id ranges; return a normalised copy."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    if len(df) == 0:
        raise DataError(f"{path}: the split is empty")
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: row {row}: label {df['label'].iloc[row]!r} is not 0 or 1")
    for col in ("uid", "iid"):
        vals = pd.to_numeric(df[col], errors="coerce")
        if vals.isna().any() or (vals < 0).any():
            row = int(np.flatnonzero((vals.isna() | (vals < 0)).to_numpy())[0])
            raise DataError(f"{path}: row {row}: {col} {df[col].iloc[row]!r} is not an id >= 0")
    out = df.reset_index(drop=True).copy()
    out["uid"] = out["uid"].astype(np.int64)
    out["iid"] = out["iid"].astype(np.int64)
    out["label"] = labels.astype(np.int64).to_numpy()
    out["not_cold"] = out["not_cold"].astype(np.int64)
    his_min = min((min(h) if len(h) else 0) for h in out["his"])
    if his_min < 0:
        raise DataError(f"{path}: column his holds a negative item id")
    return out


@dataclass
class InteractionData:
    """The splits of one data set. n_users/n_items = max id + 1 over all splits."""
    splits: Dict[str, pd.DataFrame]
    n_users: int
    n_items: int
    path: str


def load_interactions(path_dir: str, files: Dict[str, str]) -> InteractionData:
    """files: split name -> file stem, e.g. {"train": "train_ood2", ...}."""
    if not os.path.isdir(path_dir):
        raise DataError(f"data directory not found: {path_dir}")
    splits = {}
    for split, stem in files.items():
        df, path = _read(path_dir, stem)
        splits[split] = validate(df, path)
    # Python ints: a history's ids are numpy scalars, and these sizes go into checkpoints
    # that safe (weights_only) loading must read back.
    n_users = 1 + max(int(df["uid"].max()) for df in splits.values())
    n_items = 1 + max(max(int(df["iid"].max()), max((int(max(h)) if len(h) else 0) for h in df["his"]))
                      for df in splits.values())
    return InteractionData(splits, n_users, n_items, path_dir)
