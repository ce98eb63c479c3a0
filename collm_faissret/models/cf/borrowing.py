"""Cold-start arithmetic: the numpy functions that compute borrowed vectors from warm ones.

``cold_start.py``'s wrappers call these; they hold no state and know no model:

* ``similarity_weighted_mean``: the mean of a query's nearest neighbours in an
  ``ItemIndex``, weighted by similarity (the one nearest-neighbour step);
* user histories as vectors: ``user_documents`` / ``idf_weights`` / ``tfidf_rows``
  (TF-IDF over item ids) and ``unit_rows``;
* the history map: ``history_bag`` (a row's history as a sparse bag),
  ``training_bags`` and ``fit_history_map`` (ridge regression, solved directly or
  by conjugate gradients for large catalogs);
* cold items: ``borrow_cold_items`` / ``borrow_item_rows`` (an item table's cold
  rows, and its bias, from the nearest warm items by title text, ``text.py``).

Shapes: item ids are int64 with 0 as padding; tables are float32 [rows, d].
"""
from typing import Dict, Optional

import numpy as np
import scipy.sparse as sp

from ...retrieval.index import ItemIndex, RetrievalConfig
from .text import title_vectors

# The history map is solved directly (one [F, F] system) up to this many item features; above it
# (catalogs of millions) by conjugate gradients on the sparse rows, never forming X^T X.
DIRECT_SOLVE_MAX = 16384
CG_ITERATIONS = 200
CG_TOLERANCE = 1e-6


def similarity_weighted_mean(index: ItemIndex, queries: np.ndarray, table: np.ndarray, n: int,
                             fallback: np.ndarray, exclude: Optional[np.ndarray] = None) -> np.ndarray:
    """Borrow from the n nearest neighbours: sum_j w_j table[id_j] / sum_j w_j, w_j = max(sim_j, 0).

    index: over neighbour representations, its ids index rows of ``table``;
    queries [Q, r]; table [T, d]; fallback [d] for rows with no positive
    similarity (e.g. an empty history); exclude [Q]: an id each query may not
    borrow from (itself, when a warm user plays cold). Returns float32 [Q, d].
    """
    if queries.shape[0] == 0:
        return np.zeros((0, table.shape[1]), dtype=np.float32)
    sims, ids = index.search(queries, n if exclude is None else n + 1)
    found = ids >= 0
    if exclude is not None:
        found &= ids != exclude[:, None]
        # Keep the n best of what is left (the excluded id, when found, drops out).
        rank = np.cumsum(found, axis=1)
        found &= rank <= n
    weights = np.where(found, np.maximum(sims, 0.0), 0.0).astype(np.float64)
    total = weights.sum(1, keepdims=True)
    vectors = table[np.where(found, ids, 0)]  # [Q, n, d]
    mean = (weights[..., None] * vectors).sum(1) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, mean, fallback[None, :]).astype(np.float32)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), so inner product = cosine."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def user_documents(train_df) -> Dict[int, np.ndarray]:
    """Warm uid -> sorted unique ids of every item it is known to like (histories + label-1 targets)."""
    docs: Dict[int, list] = {}
    for uid, iid, label, his in zip(train_df["uid"].to_numpy(), train_df["iid"].to_numpy(),
                                    train_df["label"].to_numpy(), train_df["his"]):
        parts = docs.setdefault(int(uid), [])
        parts.append(np.asarray(his, dtype=np.int64))
        if label == 1:
            parts.append(np.array([iid], dtype=np.int64))
    return {u: np.setdiff1d(np.concatenate(p), [0]) for u, p in docs.items()}


def idf_weights(docs, n_items: int) -> np.ndarray:
    """Smoothed inverse document frequency per item [n_items]: ln((1+N)/(1+df)) + 1."""
    df = np.zeros(n_items, dtype=np.float64)
    for items in docs:
        df[items] += 1
    return (np.log((1.0 + len(docs)) / (1.0 + df)) + 1.0).astype(np.float32)


def tfidf_rows(his: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """his [Q, h] item ids (0 = pad) -> unit TF-IDF rows [Q, n_items] (binary term frequency)."""
    x = np.zeros((his.shape[0], idf.shape[0]), dtype=np.float32)
    rows = np.repeat(np.arange(his.shape[0]), his.shape[1])
    x[rows, his.reshape(-1)] = 1.0
    x[:, 0] = 0.0
    return unit_rows(x * idf[None, :])


def history_bag(his: np.ndarray, n_items: int) -> sp.csr_matrix:
    """his [Q, h] item ids (0 = pad) -> sparse [Q, n_items + 1]: 1/len on each history item, and a
    constant 1 in the last column (the map's intercept). A row with no history is the intercept alone."""
    rows = np.repeat(np.arange(his.shape[0]), his.shape[1])
    cols = his.reshape(-1)
    keep = cols != 0
    count = np.maximum((his != 0).sum(1), 1).astype(np.float32)
    vals = (1.0 / count)[rows[keep]]
    q = his.shape[0]
    rows = np.concatenate([rows[keep], np.arange(q)])
    cols = np.concatenate([cols[keep], np.full(q, n_items)])
    vals = np.concatenate([vals, np.ones(q, dtype=np.float32)])
    return sp.csr_matrix((vals, (rows, cols)), shape=(q, n_items + 1), dtype=np.float32)


def fit_history_map(x: sp.csr_matrix, y: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge regression W = argmin |x W - y|^2 + ridge |W|^2 (closed form).

    x [N, F] sparse history bags (``history_bag``), y [N, d] the trained user
    vectors of those rows' users. Returns float32 [F, d]. Up to
    DIRECT_SOLVE_MAX features the normal equations are solved directly;
    above, by Jacobi-preconditioned conjugate gradients run on all d columns
    at once (x^T x is never formed, so a catalog of millions of items fits in
    memory).
    """
    y = y.astype(np.float64)
    rhs = np.asarray(x.T @ y)  # [F, d]
    if x.shape[1] <= DIRECT_SOLVE_MAX:
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += ridge
        return np.linalg.solve(gram, rhs).astype(np.float32)

    def apply(v):  # (x^T x + ridge) v, [F, d]
        return np.asarray(x.T @ (x @ v)) + ridge * v

    # Jacobi preconditioner: the intercept column (a 1 in every row) dwarfs the item columns,
    # and plain CG would crawl along it.
    diag = np.asarray(x.multiply(x).sum(0)).ravel().astype(np.float64)[:, None] + ridge
    w = np.zeros_like(rhs)
    r = rhs.copy()
    z = r / diag
    p = z.copy()
    rz = (r * z).sum(0)
    stop = (CG_TOLERANCE ** 2) * np.maximum((rhs * rhs).sum(0), 1e-30)
    for _ in range(CG_ITERATIONS):
        if ((r * r).sum(0) <= stop).all():
            break
        ap = apply(p)
        alpha = rz / np.maximum((p * ap).sum(0), 1e-30)
        w += alpha * p
        r -= alpha * ap
        z = r / diag
        rz_new = (r * z).sum(0)
        p = z + (rz_new / np.maximum(rz, 1e-30)) * p
        rz = rz_new
    return w.astype(np.float32)


def training_bags(train_df, history_len: int, n_items: int):
    """(x [N, n_items + 1] history bags, uid [N]) of every training row, last history_len items."""
    his = np.zeros((len(train_df), history_len), dtype=np.int64)
    for r, h in enumerate(train_df["his"]):
        h = np.asarray(h, dtype=np.int64)
        h = h[h != 0][-history_len:]
        if len(h):
            his[r, history_len - len(h):] = h
    return history_bag(his, n_items), train_df["uid"].to_numpy(np.int64)


def borrow_cold_items(item_table: np.ndarray, warm_items: np.ndarray, titles: Dict[int, str],
                      n: int, title_dim: int, index_cfg: RetrievalConfig) -> np.ndarray:
    """item_table [n_items, d] with every titled cold item replaced by its title neighbours' mean."""
    out = item_table.copy()
    warm = set(int(i) for i in warm_items)
    titled = np.array(sorted(i for i in titles if i != 0), dtype=np.int64)
    cold = np.array([i for i in titled if int(i) not in warm], dtype=np.int64)
    warm_titled = np.array([i for i in titled if int(i) in warm], dtype=np.int64)
    if len(cold) == 0 or len(warm_titled) == 0:
        return out
    vectors = title_vectors([titles[int(i)] for i in titled], title_dim)
    row_of = {int(i): r for r, i in enumerate(titled)}
    index = ItemIndex.build(vectors[[row_of[int(i)] for i in warm_titled]], warm_titled, index_cfg)
    fallback = item_table[warm_items].mean(0)
    out[cold] = similarity_weighted_mean(index, vectors[[row_of[int(i)] for i in cold]], item_table, n, fallback)
    return out


def borrow_item_rows(items: np.ndarray, bias: Optional[np.ndarray], warm_items: np.ndarray,
                     titles: Dict[int, str], cs, index_cfg: RetrievalConfig):
    """(items [n_items, d], bias [n_items] or None) with every titled cold item's row (and bias)
    replaced by the similarity-weighted mean of its cs.item_neighbors nearest warm items by title
    (cs: the ``model.cold_start`` settings, ``ColdStartConfig``; title_dim as there)."""
    table = items if bias is None else np.concatenate([items, bias[:, None]], axis=1)
    table = borrow_cold_items(table, warm_items, titles, cs.item_neighbors, cs.title_dim, index_cfg)
    if bias is None:
        return table, None
    return np.ascontiguousarray(table[:, :-1]), np.ascontiguousarray(table[:, -1])
