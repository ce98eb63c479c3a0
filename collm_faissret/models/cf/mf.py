"""Matrix factorisation: a user table and an item table, scored by dot product."""
import torch.nn as nn

from ...registry import register
from .base import CFModel


@register("cf_model", "MF")
class MF(CFModel):
    supports_cold_start = True

    def __init__(self, n_users, n_items, rec_cfg, init_std: float = 0.1):
        super().__init__(n_users, n_items, rec_cfg)
        self.user = nn.Embedding(n_users, self.dim)
        self.item = nn.Embedding(n_items, self.dim)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)

    def user_embed(self, batch):
        """[B] uid -> [B, d]"""
        return self.user(batch["uid"])

    def item_embed(self, item_ids):
        """[N] iid -> [N, d]"""
        return self.item(item_ids)
