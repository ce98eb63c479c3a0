"""Retrieve-then-rank building blocks: who is queried with what, top-k without seen
items, and ranking metrics before/after re-ranking. Pure numpy / pandas.

Per evaluated split, the queried users are those with at least one label-1
row there; their held-out positives are those rows' items. A user's query
row is its earliest row of the split: its history holds everything the user
liked before the held-out period and none of the held-out positives (a later
row's history would already list some of them).
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Set

import numpy as np
import pandas as pd

from ..metrics import hit_rate_at_k, ndcg_at_k, recall_at_k


@dataclass
class Queries:
    """One split's queried users. rows: their query rows (a DataFrame in CoLLM
    format, one per user, in ``uids`` order); relevant / seen: item-id sets per user."""
    uids: np.ndarray
    rows: pd.DataFrame
    relevant: List[Set[int]]
    seen: List[Set[int]]


def split_queries(split_df: pd.DataFrame, train_df: pd.DataFrame, exclude_seen: bool) -> Queries:
    """Users with a positive in ``split_df``; seen = their training items + query-row history
    (empty sets when exclude_seen is false)."""
    positives = split_df[split_df["label"] == 1]
    uids = np.unique(positives["uid"].to_numpy())
    # Without timestamps, the file's row order stands in for time.
    ordered = split_df.sort_values("timestamp", kind="stable") if "timestamp" in split_df.columns else split_df
    first = ordered.drop_duplicates("uid", keep="first").set_index("uid").loc[uids].reset_index()
    rel = positives.groupby("uid")["iid"].apply(lambda s: set(int(i) for i in s))
    relevant = [rel[u] for u in uids]
    seen = [set() for _ in uids]
    if exclude_seen:
        trained = train_df.groupby("uid")["iid"].apply(lambda s: set(int(i) for i in s))
        for r, (u, his) in enumerate(zip(uids, first["his"])):
            seen[r] = set(trained.get(u, set())) | {int(i) for i in his if int(i) != 0}
    return Queries(uids, first, relevant, seen)


def top_k_unseen(index, queries: np.ndarray, k: int, seen: Sequence[Set[int]]):
    """Top-k item ids per query with each query's seen items removed.

    queries [U, d] -> (ids int64 [U, k], scores float32 [U, k]), best first;
    -1 / -inf where fewer than k unseen items exist.
    """
    depth = min(index.n_items, k + max((len(s) for s in seen), default=0))
    scores, ids = index.search(queries, depth)
    out_ids = np.full((len(seen), k), -1, dtype=np.int64)
    out_scores = np.full((len(seen), k), -np.inf, dtype=np.float32)
    for r, banned in enumerate(seen):
        keep = [c for c in range(depth) if ids[r, c] >= 0 and int(ids[r, c]) not in banned][:k]
        out_ids[r, :len(keep)] = ids[r, keep]
        out_scores[r, :len(keep)] = scores[r, keep]
    return out_ids, out_scores


def rerank(cand_ids: np.ndarray, cand_scores: np.ndarray) -> np.ndarray:
    """Candidates [U, k] re-ordered by new scores [U, k] (desc; ties keep retrieval order; -1 pads last)."""
    scores = np.where(cand_ids >= 0, cand_scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(cand_ids, order, axis=1)


def ranking_metrics(ranked: np.ndarray, relevant: Sequence[Set[int]], ks: Sequence[int]) -> Dict[str, float]:
    """{"recall@k", "ndcg@k", "hit_rate@k"} for each k: ranked [U, K] item ids (-1 = none)."""
    lists = [list(r) for r in ranked]
    out = {"n_users": len(lists)}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(lists, relevant, k)
        out[f"ndcg@{k}"] = ndcg_at_k(lists, relevant, k)
        out[f"hit_rate@{k}"] = hit_rate_at_k(lists, relevant, k)
    return out


def grouped_metrics(ranked: np.ndarray, relevant: Sequence[Set[int]], ks: Sequence[int],
                    cold_user: np.ndarray) -> Dict[str, dict]:
    """ranking_metrics for all users, plus "warm_users" / "cold_users" (unseen in training)."""
    out = ranking_metrics(ranked, relevant, ks)
    for name, mask in (("warm_users", ~cold_user), ("cold_users", cold_user)):
        idx = np.flatnonzero(mask)
        out[name] = ranking_metrics(ranked[idx], [relevant[i] for i in idx], ks)
    return out
