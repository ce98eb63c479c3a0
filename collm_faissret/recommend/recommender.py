"""``Recommender``: a trained run's top-K items for a user (Faiss retrieval, then the LLM).

    rec = Recommender.from_run("outputs/demo/stage2")
    rec.recommend(user=1, k=10, candidates=50)        # a known user, their latest history
    rec.recommend(history=["Toy Story (1995)", 50])   # a new user, known only by a history
    rec.recommend(user=[1, 7, 42])                    # several users, scored in one pass

Per request: the retriever's user vector (the run's CF model; a new user's borrowed from the
history as cold start borrows it) queries an index over the catalog for its top
``candidates`` unseen items; the LLM scores those prompts (user, history, candidate) and the
``k`` best are returned. Building and scoring are evaluate-only's own code: the run's task
builds the model (merged LoRA, the run's precision) and the runner's ``evaluate`` scores the
candidate rows (shared prefixes, batches), so a prompt's score is the one evaluate-only
gives it. A CF baseline run ranks by its retrieval scores alone (no LLM).
"""
import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd

from .. import dist, registry
from ..retrieval.ranking import rerank
from ..tasks.recommend import RecommendTask
from .catalog import Catalog
from .errors import RecommendError
from .new_users import NewUsers
from .run_dir import load_run_config, option_strings

log = logging.getLogger("collm_faissret")

COLUMNS = ["rank", "item_id", "title", "llm_score", "retriever_score", "retriever_rank"]
SPLIT = "recommend"  # the name the candidate rows are scored under (log lines, progress bar)


def check_sizes(k: int, candidates: int) -> None:
    """RecommendError unless 1 <= k <= candidates (the list is cut from the retrieved candidates)."""
    if k < 1 or candidates < 1:
        raise RecommendError(f"k ({k}) and candidates ({candidates}) must be >= 1")
    if k > candidates:
        raise RecommendError(f"k ({k}) is larger than candidates ({candidates}): the LLM ranks the "
                             "retrieved candidates, so retrieve at least k")


@dataclass
class Request:
    """One list to make: ``user`` as asked (None: a new user), ``uid`` as the rows carry it
    (negative for a new user), the history (item ids and titles, oldest first), seen items."""
    user: Optional[int]
    uid: int
    his: List[int]
    his_title: List[str]
    seen: set


class Recommender:
    """A run's model, retriever and index, ready to rank items for users. Build with ``from_run``."""

    def __init__(self, run_dir, cfg, task, runner, model, catalog):
        self.run_dir, self.cfg, self.task, self.runner, self.model = run_dir, cfg, task, runner, model
        self.catalog = catalog

    @classmethod
    def from_run(cls, run_dir: str, **overrides) -> "Recommender":
        """Rebuild a run's model from its directory: its config.yaml, checkpoint_best.pth (an
        evaluate-only run: the checkpoint it evaluated), the CF weights and data it names.

        overrides: config keys, dotted (``**{"datasets.ml100k_ood.path": "data/ml-100k"}``) or
        with ``__`` for dots (``run__device="cpu"``), applied after the run's config.
        """
        cfg, ckpt = load_run_config(run_dir, option_strings(overrides))
        device = dist.init(cfg.run.device, cfg.run.dist_timeout_s)
        RecommendTask.check_config(cfg)
        task = RecommendTask(cfg)
        data = task.load_data()
        model = task.build_model(device)
        cf_class = registry.get("cf_model", task.retriever.name)
        wrapped = NewUsers(task.retriever, data, cfg.model.cold_start, task.index_cfg, cf_class)
        if getattr(model, "cf", None) is task.retriever:  # stage 2: the same model fills the ID slots
            model.cf = wrapped
        if getattr(model, "hybrid_cf", None) is not None:  # a hybrid score's own CF model: known users only
            inner = model.hybrid_cf
            model.hybrid_cf = NewUsers(inner, data, cfg.model.cold_start, task.index_cfg,
                                       registry.get("cf_model", inner.name)).eval()
        if task.cf_only:
            model = wrapped
        task.retriever = wrapped
        task.build_index(model)
        runner = registry.get("runner", cfg.run.runner)(cfg, task, device)
        runner.model, runner.datasets = model, {}
        runner.log_precision()
        log.info("recommender: %s from %s (%s, retrieval by %s)", cfg.model.arch, ckpt,
                 "no LLM: ranked by retrieval" if task.cf_only else "LLM re-ranks the candidates", wrapped.name)
        return cls(run_dir, cfg, task, runner, model, Catalog(data, task.titles))

    @property
    def uses_llm(self) -> bool:
        """False for a CF baseline run: its lists are the retriever's."""
        return not self.task.cf_only

    @property
    def retriever_name(self) -> str:
        return self.task.retriever.name

    # ----- what the data says ----------------------------------------------------
    def history(self, user: int) -> pd.DataFrame:
        """A known user's latest history (item_id, title), oldest first: what their list is made from."""
        ids, titles = self.catalog.latest(user)
        return pd.DataFrame({"item_id": ids, "title": titles})

    def resolve(self, history: Sequence) -> pd.DataFrame:
        """History entries (item ids, or titles matched exactly) as (item_id, title)."""
        ids, titles = self.catalog.resolve(history)
        return pd.DataFrame({"item_id": ids, "title": titles})

    # ----- lists -------------------------------------------------------------------
    def recommend(self, user=None, history: Optional[Sequence] = None, k: int = 10, candidates: int = 50,
                  exclude_seen: bool = True) -> pd.DataFrame:
        """The ``k`` best of each request's top-``candidates`` retrieved items, by the LLM's score.

        user: a known user id, or a list of them (a batch: one scoring pass, and a ``user`` column);
        None with a history: a new user. history: item ids and/or titles, oldest first; with a
        user, it replaces the user's own. exclude_seen: leave out the user's items in the data and
        the history's. Returns rank, item_id, title, llm_score (NaN for a CF run),
        retriever_score, retriever_rank (1 = the retriever's best); ranks start at 1.
        """
        check_sizes(k, candidates)
        batch = isinstance(user, (list, tuple, np.ndarray))
        requests = self._requests(list(user) if batch else [user], history, exclude_seen)
        frames = self._rank(requests, k, candidates)
        if not batch:
            return frames[0]
        return pd.concat([f.assign(user=pd.array([r.user] * len(f), dtype="Int64")) for r, f in zip(requests, frames)],
                         ignore_index=True)[["user"] + COLUMNS]

    def score(self, items: Sequence[int], user: Optional[int] = None, history: Optional[Sequence] = None):
        """LLM scores of given items (item_id, title, llm_score) for one user, no retrieval: the
        prompts evaluate-only scores for these (user, history, item) rows. Rows that evaluate-only
        scored together (a user's rows of one history) give its scores within 1e-5 when scored
        together here too; one row alone takes the whole-prompt path, within 1e-4 of a shared one."""
        if not self.uses_llm:
            raise RecommendError(f"{self.run_dir} is a CF run ({self.cfg.model.arch}): no LLM to score with")
        req = self._requests([user], history, exclude_seen=False)[0]
        ids, _ = self.catalog.resolve(list(items), "item list")
        ds = self.task.item_rows(self.model, SPLIT, self._query_frame([req]).iloc[0], ids)
        rows, scores = self._scored(ds)
        out = np.full(len(ds), np.nan, dtype=np.float32)
        out[rows] = scores
        return pd.DataFrame({"item_id": ids, "title": [self.catalog.titles[i] for i in ids], "llm_score": out})

    def score_rows(self, frame: pd.DataFrame) -> np.ndarray:
        """LLM scores [N] of rows in CoLLM's format (uid, iid, his, his_title, title; label and
        not_cold optional), in one pass as evaluate-only scores a split: the same dataset, batch
        size and batches for the same rows. A split given whole (say a run's test rows) gets
        evaluate-only's scores exactly; rows batched otherwise differ by fp32 rounding (up to
        1.5e-5 measured on SmolLM2)."""
        if not self.uses_llm:
            raise RecommendError(f"{self.run_dir} is a CF run ({self.cfg.model.arch}): no LLM to score with")
        missing = [c for c in ("uid", "iid", "his", "his_title", "title") if c not in frame]
        if missing:
            raise RecommendError(f"rows to score lack column(s) {', '.join(missing)} (CoLLM's format)")
        df = frame.reset_index(drop=True)
        df = df.assign(**{c: 0 for c in ("label", "not_cold") if c not in df})
        ds = self.task.rows(df, SPLIT, self.model, self.task.history_length(self.model))
        rows, scores = self._scored(ds)
        out = np.full(len(ds), np.nan, dtype=np.float32)
        out[rows] = scores
        return out

    # ----- steps -------------------------------------------------------------------
    def _requests(self, users, history, exclude_seen) -> List[Request]:
        if not users or (history is None and all(u is None for u in users)):
            raise RecommendError("nothing to recommend for: give a user id, a history, or both")
        given = None if history is None else self.catalog.resolve(list(history))
        out = []
        for n, user in enumerate(users):
            if user is None:
                uid, seen = -1 - n, set()  # a new user: no table row (NewUsers borrows its vector)
                self.task.retriever.check_new_users()
            else:
                uid = self.catalog.check_user(int(user))
                seen = self.catalog.seen(uid)
            his, titles = given if given is not None else self.catalog.latest(uid)
            out.append(Request(None if user is None else uid, uid, list(his), list(titles),
                               (seen | set(his)) if exclude_seen else set()))
        return out

    @staticmethod
    def _query_frame(requests) -> pd.DataFrame:
        """One CoLLM-format query row per request (its item is a placeholder: retrieval fills it)."""
        return pd.DataFrame({"uid": [r.uid for r in requests], "iid": 0, "label": 0, "not_cold": 0, "title": "",
                             "his": [list(r.his) for r in requests],
                             "his_title": [list(r.his_title) for r in requests]})

    def _scored(self, ds):
        """(rows, scores) of a candidate set, through the runner's evaluate (evaluate-only's path)."""
        self.runner.datasets[SPLIT] = ds
        try:
            _, rows, scores = self.runner.evaluate(SPLIT)
        finally:
            del self.runner.datasets[SPLIT]
        return rows, scores

    def _rank(self, requests, k, candidates) -> List[pd.DataFrame]:
        ds = self.task.asked(self.model, SPLIT, self._query_frame(requests), [r.seen for r in requests], candidates)
        info = ds.ranking
        cand, row_of = info["cand"], info["row_of"]  # [Q, candidates]: item ids and their rows (-1: none)
        retrieval = np.full(cand.shape, -np.inf, dtype=np.float64)
        retrieval[row_of >= 0] = info["retrieval_scores"][row_of[row_of >= 0]]
        llm = np.full(cand.shape, np.nan, dtype=np.float64)
        if self.uses_llm and len(ds):
            by_row = np.full(len(ds), np.nan, dtype=np.float64)
            rows, scores = self._scored(ds)
            by_row[rows] = scores
            llm[row_of >= 0] = by_row[row_of[row_of >= 0]]
        ranked = rerank(cand, np.where(np.isnan(llm), retrieval, llm))  # a CF run: the retrieval order
        frames = []
        for q in range(len(requests)):
            slot = {int(i): s for s, i in enumerate(cand[q]) if i >= 0}
            order = [slot[int(i)] for i in ranked[q][:k] if i >= 0]
            frames.append(pd.DataFrame({
                "rank": np.arange(1, len(order) + 1), "item_id": cand[q, order].astype(np.int64),
                "title": [self.catalog.titles[int(i)] for i in cand[q, order]],
                "llm_score": llm[q, order], "retriever_score": retrieval[q, order],
                "retriever_rank": np.asarray(order, dtype=np.int64) + 1})[COLUMNS])
        return frames
