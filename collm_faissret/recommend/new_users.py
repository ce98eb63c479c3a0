"""Users not in the data, known only by a history: a CF model that also serves them.

A request for a new user carries a negative uid (no table has a row for it). ``NewUsers``
wraps the run's CF model (the retriever and, for a stage-2 prompt, the model behind the
``<UserID>`` slot) and gives those rows the vector cold start gives a cold user
(``model.cold_start``: ``ColdStartCF.cold_users`` on the row's history, with the run's
settings); the other rows go to the wrapped model unchanged, so a known user's vectors, and
scores, are the run's own. Models that read the user from the history (SASRec) need no
borrowing: their new rows get the uid of a user without training rows (a user-ID offset,
where the model has one, is zero for such a user).
"""
import numpy as np
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ..models.cf import cold_start_view
from .errors import RecommendError


class NewUsers(nn.Module):
    """cf with rows of uid < 0 served from their history. Same interface for what scoring and
    retrieval call: user_embed(batch: uid [B], his [B, h]) -> [B, d]; item_embed(ids [N]) -> [N, d]."""

    def __init__(self, cf, data, cold_start, index_cfg, cf_class):
        """cold_start: the run's ``model.cold_start`` section (used as if enabled); cf_class: the
        registered class of the CF model (its capabilities)."""
        super().__init__()
        self.inner = cf
        self.name, self.dim, self.n_users, self.n_items = cf.name, cf.dim, cf.n_users, cf.n_items
        self.prompts, self.pad_id = None, cf.pad_id
        self.data, self.cold_start, self.index_cfg = data, cold_start, index_cfg
        self.borrows = bool(cf_class.supports_cold_start)
        self.reads_history = not self.borrows and cf.history_len > 0
        # a borrowed vector reads cold_start.history_len ids: rows must carry that many
        self.history_len = max(cf.history_len, int(cold_start.history_len) if self.borrows else 0)
        self._borrower = self._spare = None

    def check_new_users(self) -> None:
        """RecommendError when this model has no way to serve a user outside the data."""
        if not (self.borrows or self.reads_history):
            raise RecommendError(f"{self.name} has no vector for a user outside the data (it has no cold start): "
                                 "ask for a known user")

    def user_embed(self, batch) -> torch.Tensor:
        """uid [B] (< 0: a new user), his [B, h] -> [B, d]"""
        uid = batch["uid"]
        new = uid < 0
        if not bool(new.any()):
            return self.inner.user_embed(batch)
        self.check_new_users()
        out = self.inner.user_embed({**batch, "uid": torch.where(new, self._spare_uid(), uid)})
        if self.borrows:
            his = batch["his"][new][:, -int(self.cold_start.history_len):].cpu().numpy()
            out = out.clone()
            out[new] = torch.from_numpy(self.borrower().cold_users(his)).to(out)
        return out

    def item_embed(self, item_ids) -> torch.Tensor:
        """[N] iid -> [N, d]"""
        return self.inner.item_embed(item_ids)

    def score(self, batch) -> torch.Tensor:
        """The wrapped model's logit [B] (a hybrid score adds it); a new user has none: its borrowed
        vector stands in for the user in the prompt, not in the CF model's own scoring head."""
        if bool((batch["uid"] < 0).any()):
            raise RecommendError(f"this run's score adds {self.name}'s own logit (model.answer_score hybrid), "
                                 "which a user outside the data does not have: ask for a known user")
        return self.inner.score(batch)

    def borrower(self):
        """The run's cold-start view of the CF model (made on the first new user when the run's
        model has none: the neighbour indexes take a moment)."""
        if self._borrower is None:
            if hasattr(self.inner, "cold_users"):
                self._borrower = self.inner
            else:
                self._borrower = cold_start_view(self.inner, self.data, _enabled(self.cold_start), self.index_cfg)
        return self._borrower

    def _spare_uid(self) -> int:
        """A uid with no training row (zero user-ID offset), 0 when every uid has one."""
        if self._spare is None:
            warm = np.zeros(self.n_users, dtype=bool)
            warm[self.data.splits["train"]["uid"].to_numpy()] = True
            cold = np.flatnonzero(~warm)
            self._spare = int(cold[0]) if len(cold) else 0
        return self._spare


def _enabled(section):
    """The ``model.cold_start`` section with ``enabled`` set (a plain copy: the run's is read-only)."""
    copy = OmegaConf.create(OmegaConf.to_container(section, resolve=True))
    copy.enabled = True
    return copy
