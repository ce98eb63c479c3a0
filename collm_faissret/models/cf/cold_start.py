"""Cold start: users and items unseen in training borrow embeddings from warm ones.

A CF model trained on the training split has no learned vector for a user or
item that first appears later (on CoLLM's ML-1M split 43% of test rows; MF
then scores all of them alike). ``ColdStartCF`` wraps a trained CF model whose
user is a per-uid table (its class says ``supports_cold_start``) and keeps its interface
(user_embed / item_embed / score / forward), replacing:

* a cold item's vector by the similarity-weighted mean of its nearest warm
  items by title text (TF-IDF, see ``text.py``);
* a cold user's vector, per row (its history grows over time), by a mix of the
  similarity-weighted mean of its nearest warm users (histories compared as
  TF-IDF over item ids, or as mean item embeddings), the mean embedding of its
  history items, the mean warm user and the fitted history map: a linear map
  from the bag of the row's history items to a user vector, fitted (ridge,
  closed form) on the warm users' training rows so that it reproduces their
  trained vectors, so a cold user's vector follows what that user liked
  (optionally rescaled to the mean warm-user norm: an average of vectors is
  shorter than any of them);
* optionally a warm user's vector by (1 - a) * own + a * history mean;
* while a CoLLM model trains (simulate_cold > 0), a random share of warm rows
  by a vector borrowed from other users, so the projector learns that kind.

Models that read the user from the history (SASRec, DIN: ``supports_cold_items``)
have no cold users; ``ColdItemsCF`` gives them the cold-item part alone.

Every nearest-neighbour search goes through ``ItemIndex``. The replacement
tables are computed once from the wrapped model's current weights, so the
wrapper is for a frozen CF model (evaluation, or stage 2 with freeze_rec).
"""
import copy
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn

from ... import registry
from ...errors import ConfigError
from ...retrieval.index import ItemIndex, RetrievalConfig
from ...schema import Choice, setting
from .base import CFModel
from .text import item_titles, title_vectors

QUERY_ELEMENTS = 2 ** 24  # cap on the floats of one batch of dense TF-IDF queries
# The history map is solved directly (one [F, F] system) up to this many item features; above it
# (catalogs of millions) by conjugate gradients on the sparse rows, never forming X^T X.
DIRECT_SOLVE_MAX = 16384
CG_ITERATIONS = 200
CG_TOLERANCE = 1e-6


class ColdStartError(ConfigError):
    """Cold-start settings that cannot work; the message names the model.cold_start key."""


class UserRepr(Choice):
    tfidf = "tfidf"  # TF-IDF over the history's item ids
    item_mean = "item_mean"  # mean CF embedding of the history's items


@dataclass
class ColdStartConfig:
    """``model.cold_start``: embeddings for users/items unseen in training, borrowed from warm ones.

    "Warm" means occurring in the training split. A cold user's vector mixes
    (weights normalised to sum 1): the similarity-weighted mean of its
    ``n_neighbors`` nearest warm users (neighbors_weight), the mean embedding of
    its history items (history_weight), the mean warm user (global_weight) and
    the fitted history map (map_weight).
    """
    enabled: bool = setting(False, "replace cold users' (and items') embeddings by ones borrowed from warm "
                                   "neighbours (CF models with a per-uid user table)")
    neighbors_weight: float = setting(1.0, "weight of the similarity-weighted mean of the nearest warm users")
    history_weight: float = setting(0.0, "weight of the mean embedding of the user's history items")
    global_weight: float = setting(0.0, "weight of the mean warm user (weights are normalised to sum 1)")
    map_weight: float = setting(0.0, "weight of the fitted history map: ridge regression from the bag of the row's "
                                     "history items to the trained user vector, fitted on warm users' training rows")
    map_ridge: float = setting(10.0, "L2 penalty of the history map's ridge fit")
    user_repr: UserRepr = setting(UserRepr.tfidf, "how histories are compared: `tfidf` (of item ids) or "
                                                  "`item_mean` (of CF embeddings)")
    n_neighbors: int = setting(50, "nearest warm users averaged for a cold user")
    history_len: int = setting(50, "most recent history items read per row")
    warm_alpha: float = setting(0.0, "warm users become (1 - warm_alpha) * own + warm_alpha * history mean")
    cold_items: bool = setting(True, "also give cold items the mean of their nearest warm items by title text")
    item_neighbors: int = setting(10, "nearest warm items averaged for a cold item")
    title_dim: int = setting(128, "TF-IDF title vectors reduced to this many SVD components (0: keep all)")
    match_norm: bool = setting(False, "scale each borrowed cold-user vector to the mean norm of warm users "
                                      "(averages are shorter than the vectors a model was trained on)")
    simulate_cold: float = setting(0.0, "CoLLM stage-2 training only: this share of warm-user rows gets a vector "
                                        "borrowed from other users, so the projector learns to read borrowed vectors")

    def __post_init__(self):
        check_ranges(self)


def cold_items_only(cls) -> bool:
    """The class reads its user from the history (nothing cold about users) but has an item table
    whose cold rows can be borrowed: its class says ``supports_cold_items``."""
    return not cls.supports_cold_start and getattr(cls, "supports_cold_items", False)


def supported_models():
    """Registered CF models whose class says ``supports_cold_start`` (a per-uid user table: cold
    users and items) or ``supports_cold_items`` (SASRec, DIN: users come from the row's history
    already, so only items can be cold)."""
    return [n for n in registry.names("cf_model")
            if registry.get("cf_model", n).supports_cold_start or cold_items_only(registry.get("cf_model", n))]


def check_config(cs, model_name: str) -> None:
    """Raise ColdStartError for an unsupported model or an out-of-range setting."""
    if model_name not in supported_models():
        raise ColdStartError(f"model.cold_start.enabled: {model_name} has no per-user or item table to fill; "
                             "supported: " + ", ".join(supported_models()))
    check_ranges(cs)


def check_ranges(cs) -> None:
    """Raise ColdStartError for a setting outside its range (names the model.cold_start key)."""
    if cs.user_repr not in [r.value for r in UserRepr]:
        raise ColdStartError(f"model.cold_start.user_repr {str(cs.user_repr)!r}: use one of "
                             + ", ".join(r.value for r in UserRepr))
    weights = (cs.neighbors_weight, cs.history_weight, cs.global_weight, cs.map_weight)
    if min(weights) < 0 or sum(weights) <= 0:
        raise ColdStartError("model.cold_start.neighbors_weight/history_weight/global_weight/map_weight must be "
                             f">= 0 with a positive sum, got {weights}")
    if cs.map_ridge <= 0:
        raise ColdStartError(f"model.cold_start.map_ridge must be > 0, got {cs.map_ridge}")
    for key in ("warm_alpha", "simulate_cold"):
        if not 0.0 <= getattr(cs, key) <= 1.0:
            raise ColdStartError(f"model.cold_start.{key} must be in [0, 1], got {getattr(cs, key)}")
    for key in ("n_neighbors", "item_neighbors", "history_len"):
        if getattr(cs, key) < 1:
            raise ColdStartError(f"model.cold_start.{key} must be >= 1, got {getattr(cs, key)}")
    if cs.title_dim < 0:
        raise ColdStartError(f"model.cold_start.title_dim must be >= 0, got {cs.title_dim}")


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


class ColdStartCF(nn.Module):
    """A frozen table CF model with borrowed vectors for cold users and items.

    Same interface as the wrapped model: user_embed(batch: uid [B], his [B, h])
    -> [B, d]; item_embed(ids [N]) -> [N, d]; score(batch) -> [B];
    forward(batch) -> {"loss", "logits"}. The wrapped model stays a submodule
    (``base``), so its parameters keep their group in CoLLM. ``titles`` (item
    id -> title) defaults to every title in ``data``.
    """

    def __init__(self, base, data, cs, index_cfg: RetrievalConfig, titles: Optional[Dict[int, str]] = None):
        super().__init__()
        check_config(cs, base.name)
        if not base.supports_cold_start:
            raise ColdStartError(f"model.cold_start: {base.name} has no per-user table; its cold items are "
                                 "filled by ColdItemsCF")
        self.base, self.cs = base, cs
        self.name, self.dim = base.name, base.dim
        self.prompts, self.pad_id = None, base.pad_id
        self.history_len = max(base.history_len, cs.history_len)
        self.n_users, self.n_items = base.n_users, base.n_items
        self.index_cfg = index_cfg
        users, items = self._tables(base)
        train = data.splits["train"]
        self.warm_users = np.unique(train["uid"].to_numpy())
        warm_items = np.unique(train["iid"].to_numpy())
        item_bias = None if base.item_bias is None else base.item_bias.detach().float().cpu().numpy()
        if cs.cold_items:
            titles = item_titles(data) if titles is None else titles
            items, item_bias = borrow_item_rows(items, item_bias, warm_items, titles, cs, self.index_cfg)
        is_warm = torch.zeros(self.n_users, dtype=torch.bool)
        is_warm[torch.from_numpy(self.warm_users)] = True
        device = next(base.parameters()).device
        # Not persistent: they are derived from the base weights, never a checkpoint's business.
        self.register_buffer("user_table", torch.from_numpy(users).to(device), persistent=False)
        self.register_buffer("item_table", torch.from_numpy(items).to(device), persistent=False)
        self.register_buffer("is_warm_user", is_warm.to(device), persistent=False)
        self.item_bias_table = None if item_bias is None else torch.from_numpy(item_bias).to(device)
        self._users_np, self._items_np = users, items
        self._global = users[self.warm_users].mean(0)
        self._warm_norm = float(np.linalg.norm(users[self.warm_users], axis=1).mean())
        self._user_index = None
        if cs.neighbors_weight > 0:
            self._build_user_index(train)
        self._map = None
        if cs.map_weight > 0:
            x, uid = training_bags(train, cs.history_len, self.n_items)
            self._map = fit_history_map(x, users[uid], cs.map_ridge)  # [n_items + 1, d]

    @staticmethod
    @torch.no_grad()
    def _tables(base):
        """(users [n_users, d], items [n_items, d]) float32 numpy from the base model's current weights."""
        was_training = base.training
        base.eval()
        device = next(base.parameters()).device
        users = base.user_embed({"uid": torch.arange(base.n_users, device=device)})
        items = base.item_embed(torch.arange(base.n_items, device=device))
        base.train(was_training)
        return users.float().cpu().numpy(), items.float().cpu().numpy()

    def _build_user_index(self, train):
        docs = user_documents(train)
        uids = np.array(sorted(docs), dtype=np.int64)
        width = max(len(docs[u]) for u in uids)
        padded = np.zeros((len(uids), max(width, 1)), dtype=np.int64)
        for r, u in enumerate(uids):
            padded[r, :len(docs[u])] = docs[u]
        self._idf = idf_weights([docs[u] for u in uids], self.n_items)
        step = self._query_step(padded.shape[1])
        reprs = np.concatenate([self._represent(padded[s:s + step]) for s in range(0, len(uids), step)])
        self._user_index = ItemIndex.build(reprs, uids, self.index_cfg)

    def _query_step(self, width: int) -> int:
        """Rows per step that bound one step's dense arrays: [rows, n_items] TF-IDF queries,
        [rows, width, d] history item vectors."""
        per_row = width * self.dim
        if self.cs.user_repr == "tfidf":
            per_row = max(per_row, self.n_items)
        return max(1, QUERY_ELEMENTS // max(per_row, 1))

    def _represent(self, his: np.ndarray) -> np.ndarray:
        """his [Q, h] -> unit vectors that nearest-user search compares."""
        if self.cs.user_repr == "tfidf":
            return tfidf_rows(his, self._idf)
        return unit_rows(self._history_mean_np(his)[0])

    def _history_mean_np(self, his: np.ndarray):
        """his [Q, h] -> (mean item vector [Q, d], has_history [Q] bool)."""
        mask = (his != 0)[..., None]
        count = mask.sum(1)
        mean = (self._items_np[his] * mask).sum(1) / np.maximum(count, 1)
        return mean.astype(np.float32), count[:, 0] > 0

    def cold_users(self, his: np.ndarray, exclude: Optional[np.ndarray] = None) -> np.ndarray:
        """Borrowed vectors for cold rows: his [C, h] (0-padded) -> [C, d] float32.

        exclude [C]: a uid per row that may not be a neighbour (None: no exclusion).
        """
        step = self._query_step(his.shape[1])
        if his.shape[0] > step:
            return np.concatenate([self.cold_users(his[s:s + step], None if exclude is None else exclude[s:s + step])
                                   for s in range(0, his.shape[0], step)])
        cs = self.cs
        hist, has = self._history_mean_np(his)
        glob = np.broadcast_to(self._global, hist.shape)
        neighbors = glob
        if cs.neighbors_weight > 0:
            neighbors = similarity_weighted_mean(self._user_index, self._represent(his), self._users_np,
                                                 cs.n_neighbors, self._global, exclude)
        mapped = glob
        if self._map is not None:
            mapped = np.asarray(history_bag(his, self.n_items) @ self._map)
        # A row with no history has nothing to compare or average: it gets the mean warm user.
        hist = np.where(has[:, None], hist, glob)
        mapped = np.where(has[:, None], mapped, glob)
        total = cs.neighbors_weight + cs.history_weight + cs.global_weight + cs.map_weight
        mixed = (cs.neighbors_weight * neighbors + cs.history_weight * hist + cs.global_weight * glob
                 + cs.map_weight * mapped) / total
        if cs.match_norm:
            mixed = unit_rows(mixed) * self._warm_norm
        return mixed.astype(np.float32)

    def user_embed(self, batch) -> torch.Tensor:
        """uid [B], his [B, h] -> [B, d]"""
        uid = batch["uid"]
        his = batch["his"][:, -self.cs.history_len:]
        out = self.user_table[uid]
        warm = self.is_warm_user[uid]
        if self.cs.warm_alpha > 0 and bool(warm.any()):
            hist, has = self._history_mean_np(his[warm].cpu().numpy())
            own = out[warm]
            blended = (1 - self.cs.warm_alpha) * own + self.cs.warm_alpha * torch.from_numpy(hist).to(own)
            out = out.clone()
            out[warm] = torch.where(torch.from_numpy(has).to(own.device)[:, None], blended, own)
        if bool((~warm).any()):
            cold = torch.from_numpy(self.cold_users(his[~warm].cpu().numpy())).to(out)
            out = out.clone()
            out[~warm] = cold
        if self.training and self.cs.simulate_cold > 0:
            # Training rows are all warm: some play cold (borrowing from others, never
            # themselves), so what reads these vectors also learns the borrowed kind.
            play = warm & (torch.rand(uid.shape, device=uid.device) < self.cs.simulate_cold)
            if bool(play.any()):
                borrowed = self.cold_users(his[play].cpu().numpy(), uid[play].cpu().numpy())
                out = out.clone()
                out[play] = torch.from_numpy(borrowed).to(out)
        return out

    def item_embed(self, item_ids) -> torch.Tensor:
        """[N] iid -> [N, d]"""
        return self.item_table[item_ids]

    def score(self, batch) -> torch.Tensor:
        """[B] logits: <user, item> plus the enabled item bias (borrowed for cold items) and user bias."""
        logits = (self.user_embed(batch) * self.item_embed(batch["iid"])).sum(-1)
        if self.item_bias_table is not None:
            logits = logits + self.item_bias_table[batch["iid"]]
        if self.base.user_bias is not None:
            logits = logits + self.base.user_bias[batch["uid"]]
        return logits

    forward = CFModel.forward  # {"loss", "logits"} from this wrapper's score
    collate_fn = CFModel.collate_fn

    def for_scoring(self):
        return self

    def saved_state_dict(self):
        return self.base.saved_state_dict()  # the borrowed tables are derived, never saved

    zero_shot = has_artifacts = False  # as the CF model it wraps


class ColdItemsCF(nn.Module):
    """A frozen history CF model (SASRec, DIN: ``supports_cold_items``) whose cold items take
    the similarity-weighted mean of their nearest warm items by title, in its item table ``item``
    (read for the history and the target alike) and its item bias.

    Same interface as the wrapped model; scoring runs on a copy of it with the
    borrowed rows written in, so the wrapped model (``base``, a submodule,
    whose weights a checkpoint keeps) is left as it was.
    """

    def __init__(self, base, data, cs, index_cfg: RetrievalConfig, titles: Optional[Dict[int, str]] = None):
        super().__init__()
        check_config(cs, base.name)
        self.base, self.cs = base, cs
        self.name, self.dim, self.n_users, self.n_items = base.name, base.dim, base.n_users, base.n_items
        self.prompts, self.pad_id, self.history_len = None, base.pad_id, base.history_len
        # Not a submodule: its rows are derived, never a checkpoint's business (nor the
        # base's view cache, which the copy must not drag along).
        scorer = copy.deepcopy(base, {id(base.scoring_view): None})
        if cs.cold_items:
            warm_items = np.unique(data.splits["train"]["iid"].to_numpy())
            titles = item_titles(data) if titles is None else titles
            table = scorer.item.weight.detach().float().cpu().numpy()
            bias = None if scorer.item_bias is None else scorer.item_bias.detach().float().cpu().numpy()
            table, bias = borrow_item_rows(table, bias, warm_items, titles, cs, index_cfg)
            with torch.no_grad():
                scorer.item.weight.copy_(torch.from_numpy(table))
                if bias is not None:
                    scorer.item_bias.copy_(torch.from_numpy(bias))
        scorer.requires_grad_(False)
        object.__setattr__(self, "scorer", scorer)

    def train(self, mode: bool = True):
        super().train(mode)
        self.scorer.train(mode)
        return self

    def user_embed(self, batch) -> torch.Tensor:
        """his [B, h] (+ uid, iid) -> [B, d]"""
        return self.scorer.user_embed(batch)

    def item_embed(self, item_ids) -> torch.Tensor:
        """[N] iid -> [N, d]"""
        return self.scorer.item_embed(item_ids)

    def score(self, batch) -> torch.Tensor:
        """[B] logits of the model with borrowed cold-item rows"""
        return self.scorer.score(batch)

    forward = CFModel.forward
    collate_fn = CFModel.collate_fn

    def for_scoring(self):
        return self

    def saved_state_dict(self):
        return self.base.saved_state_dict()

    zero_shot = has_artifacts = False


def borrow_item_rows(items: np.ndarray, bias: Optional[np.ndarray], warm_items: np.ndarray,
                     titles: Dict[int, str], cs, index_cfg: RetrievalConfig):
    """(items [n_items, d], bias [n_items] or None) with every titled cold item's row (and bias)
    replaced by the similarity-weighted mean of its cs.item_neighbors nearest warm items by title."""
    table = items if bias is None else np.concatenate([items, bias[:, None]], axis=1)
    table = borrow_cold_items(table, warm_items, titles, cs.item_neighbors, cs.title_dim, index_cfg)
    if bias is None:
        return table, None
    return np.ascontiguousarray(table[:, :-1]), np.ascontiguousarray(table[:, -1])


def with_cold_start(cf, data, cs, index_cfg: RetrievalConfig, titles: Optional[Dict[int, str]] = None):
    """``cf`` itself when cold start is off (or cf is None), else a ColdStartCF (models with a
    per-user table) or ColdItemsCF (history models) around it whose neighbour indexes are built
    with ``index_cfg`` (the ``retrieval`` keys). ``titles`` (item id -> title) defaults to every
    title in ``data``."""
    if cf is None or not cs.enabled:
        return cf
    check_config(cs, cf.name)
    if cold_items_only(type(cf)):
        return ColdItemsCF(cf, data, cs, index_cfg, titles=titles)
    return ColdStartCF(cf, data, cs, index_cfg, titles=titles)
