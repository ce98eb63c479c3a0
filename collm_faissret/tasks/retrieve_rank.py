"""Retrieve-then-rank evaluation (``run.task: retrieve_rank`` with ``run.evaluate: true``).

Per evaluated split: an ItemIndex over the CF model's item vectors (or their
FECE projections) serves each user with a held-out positive its top-K
unseen candidates, queried with the user's collaborative vector (borrowed
for cold users when model.cold_start.enabled). CoLLM then scores only those
K prompts per user and re-ranks them. Recall/NDCG/HitRate@k are reported
for retrieval alone and after re-ranking; the number of LLM calls goes into
the metrics, with the prompt tokens the LM computed (a user's K prompts
share everything before the target title: scored as one group, that part
is computed once per batch). With a CF model as model.arch there is no LLM: the candidates
keep their retrieval scores (retrieval metrics only, 0 LLM calls).

Each split's dataset holds one row per (user, candidate), so the runner's
batching, DDP gathering and predictions_<split>.csv work unchanged; the
row's label says whether the candidate is a held-out positive.
"""
import logging

import numpy as np
import pandas as pd
import torch

from .. import registry
from ..datasets import RecRows
from ..errors import ConfigError
from ..metrics import auc_report
from ..models.cf import build_cf, cold_start_view
from ..models.cf.text import item_titles
from ..registry import register
from ..retrieval.index import ItemIndex, index_settings
from ..retrieval.ranking import grouped_metrics, rerank, split_queries, top_k_unseen
from .rec_task import RecTask, build_run_cf

log = logging.getLogger("collm_faissret")


@register("task", "retrieve_rank")
class RetrieveRankTask(RecTask):
    """Attributes after build_datasets: ``index`` (ItemIndex) and ``llm_calls`` per split."""

    # why a text-only prompt needs model.rec_config.pretrained_path (the error's start)
    stage1_needs = "retrieve_rank: the prompt has no ID slot, so retrieval needs its own CF model"

    @classmethod
    def check_config(cls, cfg) -> None:
        r = cfg.retrieval
        if not cfg.run.evaluate:
            raise ConfigError("run.task retrieve_rank only evaluates: set run.evaluate: true "
                              "(train with run.task rec or baseline_train.py first)")
        ks = sorted(set(r.metric_ks)) or [r.k]
        if ks[0] < 1 or ks[-1] > r.k:
            raise ConfigError(f"retrieval.metric_ks {list(r.metric_ks)} must lie in 1..retrieval.k ({r.k})")
        if cfg.model.arch in registry.names("cf_model") and r.embeddings == "fece":
            raise ConfigError(f"retrieval.embeddings fece needs a CoLLM model; model.arch is {cfg.model.arch}")
        named = cfg.model.arch if cfg.model.arch in registry.names("cf_model") else cfg.model.get("rec_model")
        if named in registry.names("cf_model"):  # else known once its weights are read: build_model checks
            _check_retrievable(named)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.ks = sorted(set(cfg.retrieval.metric_ks)) or [cfg.retrieval.k]
        self.index_cfg = index_settings(cfg.retrieval)
        self.cf_only = cfg.model.arch in registry.names("cf_model")
        self.index = None
        self.llm_calls = {}
        self._warm_sets = None

    # ----- model -------------------------------------------------------------
    def build_model(self, device):
        """CoLLM (cold start attached by build_collm) or, for a CF model.arch, the CF model alone
        (its scoring view: borrowed vectors for cold rows when cold start is on)."""
        if self.cf_only:
            model = self.retriever = build_run_cf(self.cfg, self.data, device).for_scoring()
        else:
            model = super().build_model(device)
            self.retriever = self._stage1_cf(model, device) if model.cf is None else model.cf
        _check_retrievable(self.retriever.name)
        return model

    def _stage1_cf(self, model, device):
        """A text-only prompt has no CF model inside: retrieval builds one from rec_config.pretrained_path."""
        if self.cfg.retrieval.embeddings == "fece":
            raise ConfigError("retrieval.embeddings fece: the prompt has no ID slot, so no projector")
        m = self.cfg.model
        cf = build_cf(m.rec_config, self.data, device, name=m.rec_model, need_weights=self.stage1_needs)
        return cold_start_view(cf, self.data, m.cold_start, self.index_cfg)

    # ----- candidates ----------------------------------------------------------
    def build_datasets(self, model):
        """train (unused, the runner expects it) and one candidate set per evaluated split."""
        his_len = self.history_length(model)
        out = {"train": RecRows(self.data.splits["train"], 0, None, name="train", his_len=his_len)}
        self.build_index(model)
        for split in list(self.cfg.run.valid_splits) + list(self.cfg.run.test_splits):
            if split in self.data.splits:
                out[split] = self._candidates(model, split, his_len)
        return out

    def history_length(self, model) -> int:
        """History ids per row the prompts, the scoring model and the retriever read."""
        return max(self.ds_cfg.max_his, model.history_len, self.retriever.history_len)

    def build_index(self, model):
        """``index``: an ItemIndex over the catalog (items with a title), by the retriever's vectors."""
        self.titles = item_titles(self.data)
        catalog = np.array(sorted(i for i in self.titles if 0 < i < self.data.n_items), dtype=np.int64)
        self.index = ItemIndex.build(self._vectors(model, items=torch.from_numpy(catalog)), catalog, self.index_cfg)
        log.info("retrieve_rank: %r over %d catalog items (%s embeddings)", self.index, len(catalog),
                 self.cfg.retrieval.embeddings)
        return self.index

    @torch.no_grad()
    def _vectors(self, model, items=None, batch=None) -> np.ndarray:
        """Item vectors [N, r] for ids ``items`` [N], or user vectors [U, r] for a ``batch``.

        r = CF dim, or proj_token_num * LLM dim for FECE projections.
        """
        cf = self.retriever
        was_training = model.training
        model.eval()
        x = cf.user_embed(batch) if items is None else cf.item_embed(items.to(self._device(cf)))
        if self.cfg.retrieval.embeddings == "fece":
            x = model.proj(x).flatten(1)
        model.train(was_training)
        return x.float().cpu().numpy()

    @staticmethod
    def _device(module):
        return next(module.parameters()).device

    def _candidates(self, model, split, his_len) -> RecRows:
        """One row per (queried user, retrieved candidate) of ``split``, with the ranking facts attached."""
        r = self.cfg.retrieval
        q = split_queries(self.data.splits[split], self.data.splits["train"], r.exclude_seen)
        return self.candidate_rows(model, split, q.rows, q.seen, r.k, his_len, q.relevant)

    def candidate_rows(self, model, name, queries, seen, k, his_len, relevant=None) -> RecRows:
        """One row per (query, retrieved candidate): each query's top-``k`` unseen catalog items.

        queries: a DataFrame in CoLLM format, one row per query (uid, his, his_title; its item is
        not read); seen [Q] sets of item ids not to retrieve; relevant [Q] sets of held-out
        positives (the rows' labels; default none). The dataset's ``ranking``: uids [Q],
        relevant, cand [Q, k] item ids (-1: fewer unseen items), row_of [Q, k] (the candidate's
        row, -1 for none), retrieval_scores [rows], cold_user [Q].
        """
        relevant = [set() for _ in range(len(queries))] if relevant is None else relevant
        query_rows = RecRows(queries, 0, None, name=name, his_len=his_len)
        device = self._device(self.retriever)
        batch = {"uid": torch.tensor(query_rows.uid, device=device), "his": torch.tensor(query_rows.his, device=device),
                 "iid": torch.zeros(len(queries), dtype=torch.long, device=device)}
        users = self._vectors(model, batch=batch) if len(queries) else np.zeros((0, self.index.dim), np.float32)
        cand, scores = top_k_unseen(self.index, users, k, seen)
        warm_users, warm_items = self._warm()
        user_row, slot = np.nonzero(cand >= 0)
        rows = queries.iloc[user_row].reset_index(drop=True)
        iids = cand[user_row, slot]
        frame = pd.DataFrame({
            "uid": rows["uid"].to_numpy(np.int64), "iid": iids,
            "label": [int(int(i) in relevant[u]) for u, i in zip(user_row, iids)],
            "not_cold": [int(int(u) in warm_users and int(i) in warm_items) for u, i in zip(rows["uid"], iids)],
            "title": [self.titles[int(i)] for i in iids], "his": rows["his"], "his_title": rows["his_title"]})
        ds = RecRows(frame, self.ds_cfg.max_his, model.prompts, name=name, his_len=his_len)
        row_of = np.full(cand.shape, -1, dtype=np.int64)
        row_of[user_row, slot] = np.arange(len(frame))
        uids = queries["uid"].to_numpy(np.int64)
        ds.ranking = {"uids": uids, "relevant": relevant, "cand": cand, "row_of": row_of,
                      "retrieval_scores": scores[user_row, slot].astype(np.float32),
                      "cold_user": np.array([int(u) not in warm_users for u in uids], dtype=bool)}
        self.llm_calls[name] = 0 if self.cf_only else len(frame)
        return ds

    def _warm(self):
        """(user ids, item ids) of the training split, as sets; read once (a query per call would
        walk the whole split again)."""
        if self._warm_sets is None:
            train = self.data.splits["train"]
            self._warm_sets = (set(train["uid"].unique().tolist()), set(train["iid"].unique().tolist()))
        return self._warm_sets

    # ----- scoring and metrics ---------------------------------------------------
    def predict(self, model, dataset, batches, device, amp_ctx, progress=None):
        """CoLLM scores every candidate prompt; a CF-only run keeps the retrieval scores."""
        if self.cf_only:
            return np.arange(len(dataset)), dataset.ranking["retrieval_scores"]
        return super().predict(model, dataset, batches, device, amp_ctx, progress)

    def report(self, dataset, rows, scores):
        """Candidate AUC (score vs held-out positive) plus retrieval / re-ranked top-k metrics."""
        info = dataset.ranking
        by_row = np.full(len(dataset), -np.inf, dtype=np.float64)
        by_row[rows] = scores
        cand = info["cand"]
        new_scores = np.where(info["row_of"] >= 0, by_row[np.maximum(info["row_of"], 0)], -np.inf)
        out = auc_report(dataset.uid[rows], dataset.label[rows], scores, dataset.not_cold[rows])
        out["retrieval"] = grouped_metrics(cand, info["relevant"], self.ks, info["cold_user"])
        out["reranked"] = grouped_metrics(rerank(cand, new_scores), info["relevant"], self.ks, info["cold_user"])
        calls = self.llm_calls.get(dataset.name, 0)
        # Tokens the LM computed: a user's candidates share their prompt up to the target title,
        # computed once per batch when run.shared_prefix is auto; whole prompts count every token.
        tokens = 0 if self.cf_only else int(getattr(dataset, "tokens_computed", 0))
        whole = 0 if self.cf_only else int(dataset.lengths()[rows].sum())
        out.update(k=self.cfg.retrieval.k, n_users=int(len(info["uids"])), llm_calls=calls,
                   llm_calls_per_user=calls / max(len(info["uids"]), 1), tokens_computed=tokens,
                   tokens_per_llm_call=tokens / max(calls, 1), tokens_whole_prompts=whole, index=repr(self.index))
        log.info("retrieve_rank %s: %d users x top-%d -> %d LLM calls, %d tokens computed (%.1f per call; "
                 "whole prompts: %d)", dataset.name, len(info["uids"]), self.cfg.retrieval.k, calls, tokens,
                 tokens / max(calls, 1), whole)
        for stage in ("retrieval", "reranked"):
            log.info("retrieve_rank %s %s: %s", dataset.name, stage,
                     " ".join(f"{key} {out[stage][key]:.4f}" for key in out[stage]
                              if "@" in key))
        return out


def _check_retrievable(name):
    """A CF model whose user vector depends on the target item (``target_aware``) cannot query an
    item index."""
    if registry.get("cf_model", name).target_aware:
        raise ConfigError(f"retrieve_rank: {name}'s user vector depends on the target item, so it cannot "
                          "query an item index; retrieve with one of "
                          + ", ".join(n for n in registry.names("cf_model")
                                      if not registry.get("cf_model", n).target_aware))
