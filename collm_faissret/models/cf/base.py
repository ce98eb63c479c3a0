"""The interface every collaborative (CF) model shares, and its weight files.

user_embed(batch) -> [B, d]; item_embed(item_ids [N]) -> [N, d];
score(batch) -> [B] logits; forward(batch) -> {"loss", "logits"} with BCE.
``batch`` holds at least uid [B], iid [B], his [B, max_his] (0-padded left)
and label [B] for the loss.
"""
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...datasets.rec_dataset import collate
from ...schema import setting
from .weights import load_into, read_cf_weights, weights_payload


@dataclass
class CFConfig:
    """``model.rec_config`` keys every CF model has; a model with more subclasses this
    and names it as its ``Config``."""
    embedding_size: int = setting(64, "dimension of user / item embeddings")
    pretrained_path: Optional[str] = setting(None, "`cf_model.pth` written by baseline_train.py (stage 2 loads it)")
    # A dot product cannot express "this user likes most things", and on CoLLM's splits the
    # item's overall appeal alone ranks well; stage 2 reads only the embeddings.
    item_bias: bool = setting(False, "a learned per-item bias added to the logit")
    user_bias: bool = setting(False, "a learned per-user bias added to the logit (zero start: unseen users add "
                                     "nothing)")

    def __post_init__(self):
        if self.embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {self.embedding_size}")


@dataclass
class HistoryCFConfig(CFConfig):
    """Keys of the models whose user is read from the history (SASRec, DIN)."""
    max_len: int = setting(20, "most recent history items read")
    dropout: float = setting(0.1, "dropout")
    user_id: bool = setting(False, "add a user-ID embedding (zero-initialised, so users unseen in training add "
                                   "nothing) to the history-based user representation")

    def __post_init__(self):
        super().__post_init__()
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")


def history_item_table(n_items: int, dim: int, init_std: float) -> nn.Embedding:
    """Item table for sequence models: normal init, row 0 (history padding) fixed at zero."""
    table = nn.Embedding(n_items, dim, padding_idx=0)
    nn.init.normal_(table.weight, std=init_std)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


def user_offset_table(n_users: int, dim: int, enabled: bool):
    """Optional user-ID embedding added to a history-based user vector (None when off).

    Zero start: a user never seen in training keeps a zero offset.
    """
    if not enabled:
        return None
    table = nn.Embedding(n_users, dim)
    nn.init.zeros_(table.weight)
    return table


class CFModel(nn.Module):
    """Base class; subclasses implement the embeddings.

    Optional per-item / per-user logit biases (rec_config.item_bias /
    user_bias) live here so every model adds them the same way; they start at
    zero, so a user never seen in training adds nothing.
    """

    name = "CF"  # set by registry.register to the registered name
    zero_shot = False  # evaluate-only needs trained weights (model.ckpt)
    # Files beside the best checkpoint: none (baseline_train.py writes cf_model.pth at the end).
    has_artifacts = False
    Config = CFConfig  # the schema of model.rec_config for this model

    # Capabilities, read through the registry (``registry.get("cf_model", name).target_aware``);
    # a new model states its own here instead of being added to name lists elsewhere.
    target_aware = False  # user_embed attends over the history against the target item: no item index can serve it
    supports_cold_start = False  # the user is a per-uid table that cold start can fill with borrowed vectors
    fits_data = False  # reads the training interactions (``fit_data``) before use, e.g. to build a graph

    # Inputs, as CoLLM states its own: no prompt, history ids per row the model reads
    # (sequence models set it), and the batch collate function.
    prompts = None
    pad_id = 0
    history_len = 0
    # Set by build_cf when model.cold_start.enabled: model -> the view that scores with
    # borrowed vectors for cold users/items (rebuilt when the weights change).
    scoring_view = None

    @property
    def collate_fn(self):
        """RecRows items -> a batch of tensors (no prompts to pad)."""
        return partial(collate, pad_id=self.pad_id)

    def saved_state_dict(self):
        """What a run checkpoint keeps: every weight and buffer (a CF model is small)."""
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    def for_scoring(self):
        """The model that scores rows: this one, or its cold-start view when cold start is on."""
        return self if self.scoring_view is None else self.scoring_view(self)

    def __init__(self, n_users: int, n_items: int, rec_cfg):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.rec_cfg = rec_cfg  # the section it was built with: cf_model.pth stores it
        self.dim = rec_cfg.embedding_size
        self.item_bias = nn.Parameter(torch.zeros(n_items)) if rec_cfg.item_bias else None
        self.user_bias = nn.Parameter(torch.zeros(n_users)) if rec_cfg.user_bias else None

    def with_biases(self, logits: torch.Tensor, batch) -> torch.Tensor:
        """logits [B] plus the enabled item / user biases of the batch's rows."""
        if self.item_bias is not None:
            logits = logits + self.item_bias[batch["iid"]]
        if self.user_bias is not None:
            logits = logits + self.user_bias[batch["uid"]]
        return logits

    def fit_data(self, data) -> None:
        """Read ``data.splits["train"]`` (only models with ``fits_data = True`` need to)."""

    def user_embed(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def item_embed(self, item_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, batch) -> torch.Tensor:
        """[B] logits: <user, item> (+ biases)."""
        return self.with_biases((self.user_embed(batch) * self.item_embed(batch["iid"])).sum(-1), batch)

    def forward(self, batch):
        logits = self.score(batch)
        loss = None
        if "label" in batch:
            loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
        return {"loss": loss, "logits": logits}

    def weights_payload(self, config_yaml: str = "") -> dict:
        """What baseline_train saves and stage 2 builds from (see weights.py)."""
        return weights_payload(self, config_yaml)

    def load_pretrained(self, path: str) -> None:
        """Load a baseline_train weight file (or CoLLM's MF one) into this model, built with the
        file's sizes; refuse one made for another model or shape."""
        load_into(self, read_cf_weights(path))
