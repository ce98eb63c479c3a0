"""Sampled negatives: training rows for items a user never rated.

CoLLM's rows are items a user rated, labelled by whether they liked it, so a model
trained on them learns "would this user like this item, given they watch it". Ranking
a retriever's unseen candidates asks another question (which of these will they watch
and like), where most candidates are items the user never rates. Extra rows that pair
a training row's user and history with an item that user never rated, labelled 0,
teach that (RecBole's negative sampling, applied to pointwise CTR rows).
"""
from typing import Dict, Set

import numpy as np
import pandas as pd


def rated_items(train: pd.DataFrame) -> Dict[int, Set[int]]:
    """uid -> the items the user has in the training split: rated rows' items (either label)
    and history items."""
    rated: Dict[int, Set[int]] = {}
    for uid, iid, his in zip(train["uid"].to_numpy(), train["iid"].to_numpy(), train["his"]):
        seen = rated.setdefault(int(uid), set())
        seen.add(int(iid))
        seen.update(int(i) for i in his if int(i) != 0)
    return rated


def with_negatives(rows: pd.DataFrame, per_row: int, titles: Dict[int, str], rated: Dict[int, Set[int]],
                   warm_items: Set[int], seed: int) -> pd.DataFrame:
    """``rows`` (a training split in CoLLM format) with ``per_row`` extra rows after each row:
    the same user, history and other columns, ``label`` 0, and an item drawn uniformly from
    ``titles`` (item id -> title) that is not in ``rated[uid]``; ``not_cold`` is the row's
    times whether the drawn item is in ``warm_items``. Draws are seeded by ``seed`` and do not
    repeat an item within one row's negatives. Time order is kept (a row's negatives follow it).

    A user who has rated every titled item gets no negatives (nothing to draw)."""
    if per_row <= 0 or len(rows) == 0:
        return rows
    catalog = np.array(sorted(titles), dtype=np.int64)
    rng = np.random.RandomState(seed)
    src, items = [], []
    for r, uid in enumerate(rows["uid"].to_numpy()):
        seen = rated.get(int(uid), set())
        free = len(catalog) - sum(1 for i in seen if i in titles)
        picked: Set[int] = set()
        while len(picked) < min(per_row, free):  # rejection sampling: users rate a small share of the catalog
            iid = int(catalog[rng.randint(len(catalog))])
            if iid not in seen and iid not in picked:
                picked.add(iid)
                src.append(r)
                items.append(iid)
    neg = rows.iloc[src].reset_index(drop=True).copy()
    neg["iid"] = np.asarray(items, dtype=np.int64)
    neg["label"] = 0
    neg["title"] = [titles[i] for i in items]
    neg["not_cold"] = neg["not_cold"].to_numpy() * np.array([int(i in warm_items) for i in items], dtype=np.int64)
    if "cf_logit" in neg:  # the source row's item's (datasets/cf_logits.py): none for the drawn item
        neg["cf_logit"] = np.nan
    # stable sort on (source row, 0 for the row itself / 1 for its negatives): each row, then its negatives
    order = np.concatenate([np.arange(len(rows)), np.asarray(src, dtype=np.int64)])
    kind = np.concatenate([np.zeros(len(rows), np.int64), np.ones(len(src), np.int64)])
    both = pd.concat([rows.reset_index(drop=True), neg], ignore_index=True)
    return both.iloc[np.lexsort((kind, order))].reset_index(drop=True)
