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

This module holds the two wrappers and ``with_cold_start``, which picks one; the
``model.cold_start`` settings and their checks are in ``cold_start_config.py``, and
the arithmetic the wrappers call (neighbour means, TF-IDF histories, the history
map, cold item rows) in ``borrowing.py``.
"""
import copy
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn

from ...retrieval.index import ItemIndex, RetrievalConfig
from .base import CFModel
from .borrowing import (
    borrow_item_rows,
    fit_history_map,
    history_bag,
    idf_weights,
    similarity_weighted_mean,
    tfidf_rows,
    training_bags,
    unit_rows,
    user_documents,
)
from .cold_start_config import ColdStartError, check_config, cold_items_only
from .text import item_titles

QUERY_ELEMENTS = 2 ** 24  # cap on the floats of one batch of dense TF-IDF queries


class ColdStartCF(nn.Module):
    """A frozen table CF model with borrowed vectors for cold users and items.

    Same interface as the wrapped model: user_embed(batch: uid [B], his [B, h])
    -> [B, d]; item_embed(ids [N]) -> [N, d]; score(batch) -> [B];
    forward(batch) -> {"loss", "logits"}. The wrapped model stays a submodule
    (``base``), so its parameters keep their group in CoLLM. ``titles`` (item
    id -> title) defaults to every title in ``data``.

    The borrowed tables are fp32 buffers: they move with the model (``.to``,
    FSDP's placement) and no precision policy casts them. user_embed and
    item_embed return vectors in the dtype of ``base``'s parameters, what
    reads them computes in (bf16 under FSDP's CUDA policy, fp32 otherwise).
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
        self.register_buffer("item_bias_table", None if item_bias is None else torch.from_numpy(item_bias).to(device),
                             persistent=False)
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
        """uid [B], his [B, h] -> [B, d] in the dtype of base's parameters"""
        return self._user_vectors(batch).to(param_dtype(self.base))

    def _user_vectors(self, batch) -> torch.Tensor:
        """uid [B], his [B, h] -> [B, d] float32"""
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
        """[N] iid -> [N, d] in the dtype of base's parameters"""
        return self.item_table[item_ids].to(param_dtype(self.base))

    def score(self, batch) -> torch.Tensor:
        """[B] logits: <user, item> plus the enabled item bias (borrowed for cold items) and user bias."""
        logits = (self._user_vectors(batch) * self.item_table[batch["iid"]]).sum(-1)
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

    Same interface as the wrapped model; scoring runs on a copy of it (``scorer``)
    with the borrowed rows written in, so the wrapped model (``base``, whose
    weights a checkpoint keeps) is left as it was. The copy is a submodule
    whose weights are fp32 non-persistent buffers (``frozen_copy``): they move
    with the model (``.to``, FSDP's placement) but are no parameters (no
    parameter group, optimizer or gradient) and no state_dict entry (derived,
    never a checkpoint's business). user_embed and item_embed return vectors
    in the dtype of ``base``'s parameters, what reads them computes in (bf16
    under FSDP's CUDA policy, fp32 otherwise).
    """

    def __init__(self, base, data, cs, index_cfg: RetrievalConfig, titles: Optional[Dict[int, str]] = None):
        super().__init__()
        check_config(cs, base.name)
        self.base, self.cs = base, cs
        self.name, self.dim, self.n_users, self.n_items = base.name, base.dim, base.n_users, base.n_items
        self.prompts, self.pad_id, self.history_len = None, base.pad_id, base.history_len
        scorer = frozen_copy(base)
        if cs.cold_items:
            warm_items = np.unique(data.splits["train"]["iid"].to_numpy())
            titles = item_titles(data) if titles is None else titles
            table = scorer.item.weight.cpu().numpy()
            bias = None if scorer.item_bias is None else scorer.item_bias.cpu().numpy()
            table, bias = borrow_item_rows(table, bias, warm_items, titles, cs, index_cfg)
            scorer.item.weight.copy_(torch.from_numpy(table))
            if bias is not None:
                scorer.item_bias.copy_(torch.from_numpy(bias))
        self.scorer = scorer

    def user_embed(self, batch) -> torch.Tensor:
        """his [B, h] (+ uid, iid) -> [B, d] in the dtype of base's parameters"""
        return self.scorer.user_embed(batch).to(param_dtype(self.base))

    def item_embed(self, item_ids) -> torch.Tensor:
        """[N] iid -> [N, d] in the dtype of base's parameters"""
        return self.scorer.item_embed(item_ids).to(param_dtype(self.base))

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


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters are fp32 non-persistent buffers (constants that
    follow the module's device but are not trained, cast by a precision policy or saved).
    Leaves out the model's cold-start view cache (``scoring_view``), which refers to the model."""
    twin = copy.deepcopy(model, {id(getattr(model, "scoring_view", None)): None})
    for module in twin.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                del module._parameters[name]
                module.register_buffer(name, param.detach().float(), persistent=False)
    return twin


def param_dtype(model: nn.Module) -> torch.dtype:
    """The dtype ``model``'s parameters compute in right now (FSDP gives its forward the policy's
    dtype): what vectors handed to the modules beside it must be in."""
    return next(model.parameters()).dtype


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
