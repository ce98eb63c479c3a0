"""The task behind ``Recommender`` (collm_faissret/recommend/): lists for the users asked about.

Retrieval and scoring are retrieve-then-rank's (``RetrieveRankTask``): the same
index over the catalog, the same top-K unseen candidates per query, and the
candidate rows scored by ``RecTask.predict`` (a CF model alone keeps the
retrieval scores). What differs is where the queries come from: the caller's
users and histories, not a split's held-out positives, so there is nothing to
measure and ``report`` only counts the work. Not registered: no run names it
in ``run.task`` (a run would have no split to evaluate); the Recommender makes it.
"""
import logging

import numpy as np
import pandas as pd

from ..datasets import RecRows
from .retrieve_rank import RetrieveRankTask

log = logging.getLogger("collm_faissret")


class RecommendTask(RetrieveRankTask):
    """RetrieveRankTask whose candidate sets come from ``asked`` queries."""

    stage1_needs = "a text-only (stage-1) run has no CF model, and retrieval needs one"

    def asked(self, model, name, queries, seen, k) -> RecRows:
        """Candidate rows for the queries (a CoLLM-format DataFrame, one row per query: uid, his,
        his_title), each its top-``k`` catalog items outside its ``seen`` set; see
        ``candidate_rows``."""
        return self.candidate_rows(model, name, queries, seen, k, self.history_length(model))

    def item_rows(self, model, name, query, items) -> RecRows:
        """One row per item of ``items`` [N] for the one query row ``query`` (a Series: uid, his,
        his_title): the prompts a list of given items is scored with, without retrieval."""
        warm_users, warm_items = self._warm()
        uid = int(query["uid"])
        frame = pd.DataFrame({
            "uid": np.full(len(items), uid, dtype=np.int64), "iid": np.asarray(items, dtype=np.int64),
            "label": np.zeros(len(items), dtype=np.int64),
            "not_cold": [int(uid in warm_users and int(i) in warm_items) for i in items],
            "title": [self.titles[int(i)] for i in items], "his": [query["his"]] * len(items),
            "his_title": [query["his_title"]] * len(items)})
        return RecRows(frame, self.ds_cfg.max_his, model.prompts, name=name, his_len=self.history_length(model))

    def report(self, dataset, rows, scores):
        """No held-out items, so no metric: the rows scored and the prompt tokens the LM computed."""
        tokens = 0 if self.cf_only else int(getattr(dataset, "tokens_computed", 0))
        calls = 0 if self.cf_only else len(rows)
        log.info("%s: %d LLM calls, %d prompt tokens computed", dataset.name, calls, tokens)
        return {"llm_calls": calls, "tokens_computed": tokens}
