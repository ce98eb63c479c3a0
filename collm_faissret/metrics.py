"""Ranking metrics as pure numpy functions.

AUC is the Mann-Whitney statistic with tied scores counted as one half
(identical to sklearn's roc_auc_score). UAUC follows CoLLM: the AUC of each
user who has both labels in the split, then the unweighted mean over those
users. It is computed for all users at once from within-user ranks, because a
per-user Python loop takes minutes on CoLLM-size splits.
"""
import numpy as np
from scipy.stats import rankdata


def auc(labels, scores) -> float:
    """AUC of ``scores`` [N] against binary ``labels`` [N]; nan if one class is absent."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks: ties count one half
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def uauc(users, labels, scores) -> float:
    """Mean per-user AUC over users with both labels present; nan if there are none.

    users [N] (any hashable ids as an array), labels [N] in {0,1}, scores [N].
    """
    users = np.asarray(users)
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if users.size == 0:
        return float("nan")
    _, group = np.unique(users, return_inverse=True)
    # Rank within each user: sort by (user, score); tied scores of one user share
    # the average of their positions, as rankdata does globally.
    order = np.lexsort((scores, group))
    g_sorted, s_sorted = group[order], scores[order]
    n = users.size
    new_block = np.ones(n, dtype=bool)
    new_block[1:] = (g_sorted[1:] != g_sorted[:-1]) | (s_sorted[1:] != s_sorted[:-1])
    block_id = np.cumsum(new_block) - 1
    position = np.arange(n, dtype=np.float64)
    block_first = position[new_block]
    block_size = np.bincount(block_id)
    avg_position = block_first + (block_size - 1) / 2.0
    user_start = np.zeros(group.max() + 1, dtype=np.float64)
    first_of_user = np.ones(n, dtype=bool)
    first_of_user[1:] = g_sorted[1:] != g_sorted[:-1]
    user_start[g_sorted[first_of_user]] = position[first_of_user]
    rank_in_user = avg_position[block_id] - user_start[g_sorted] + 1.0

    pos_sorted = labels[order]
    n_users = group.max() + 1
    n_pos = np.bincount(g_sorted, weights=pos_sorted, minlength=n_users)
    n_all = np.bincount(g_sorted, minlength=n_users)
    n_neg = n_all - n_pos
    rank_sum_pos = np.bincount(g_sorted, weights=rank_in_user * pos_sorted, minlength=n_users)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    per_user = (rank_sum_pos[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    return float(per_user.mean())


def recall_at_k(ranked_items, relevant, k: int) -> float:
    """Mean over users of |top-k ∩ relevant| / |relevant|, users with no relevant item skipped.

    ranked_items: list of [>=k] item-id sequences (best first), one per user;
    relevant: list of sets of held-out positive item ids, one per user.
    """
    vals = [len(set(list(r)[:k]) & rel) / len(rel) for r, rel in zip(ranked_items, relevant) if rel]
    return float(np.mean(vals)) if vals else float("nan")


def hit_rate_at_k(ranked_items, relevant, k: int) -> float:
    """Fraction of users (with a relevant item) whose top-k holds at least one relevant item."""
    vals = [float(bool(set(list(r)[:k]) & rel)) for r, rel in zip(ranked_items, relevant) if rel]
    return float(np.mean(vals)) if vals else float("nan")


def ndcg_at_k(ranked_items, relevant, k: int) -> float:
    """Mean binary-relevance NDCG@k: DCG = sum 1/log2(rank+1) over hits; IDCG over min(|rel|, k)."""
    vals = []
    for r, rel in zip(ranked_items, relevant):
        if not rel:
            continue
        dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(list(r)[:k]) if item in rel)
        idcg = sum(1.0 / np.log2(i + 2) for i in range(min(len(rel), k)))
        vals.append(dcg / idcg)
    return float(np.mean(vals)) if vals else float("nan")


def auc_report(users, labels, scores, not_cold) -> dict:
    """{"auc", "uauc", "warm": {"auc","uauc"}, "cold": {"auc","uauc"}, "n_rows"} for one split."""
    users, labels, scores = np.asarray(users), np.asarray(labels), np.asarray(scores)
    warm = np.asarray(not_cold).astype(bool)
    out = {"auc": auc(labels, scores), "uauc": uauc(users, labels, scores)}
    for name, mask in (("warm", warm), ("cold", ~warm)):
        out[name] = {"auc": auc(labels[mask], scores[mask]), "uauc": uauc(users[mask], labels[mask], scores[mask]),
                     "n_rows": int(mask.sum())}
    out["n_rows"] = int(labels.size)
    return out
