"""Soft prompt: one learned user vector and one learned item vector shared by all rows.

The prompt-tuning baseline CoLLM compares against: the ID slots get tokens that
carry no user- or item-specific information, so any gain over stage 1 comes
from the extra tunable tokens alone. Train it in stage 2 with freeze_rec: false.
"""
import torch
import torch.nn as nn

from ...registry import register
from .base import CFModel


@register("cf_model", "soft_prompt")
class SoftPrompt(CFModel):
    def __init__(self, n_users, n_items, rec_cfg, init_std: float = 0.1):
        super().__init__(n_users, n_items, rec_cfg)
        self.user_vec = nn.Parameter(torch.randn(self.dim) * init_std)
        self.item_vec = nn.Parameter(torch.randn(self.dim) * init_std)

    def user_embed(self, batch):
        """[B] -> [B, d], the same vector for every user"""
        return self.user_vec.expand(batch["uid"].shape[0], -1)

    def item_embed(self, item_ids):
        """[N] -> [N, d], the same vector for every item"""
        return self.item_vec.expand(item_ids.shape[0], -1)
