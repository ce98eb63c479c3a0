"""DIN (Zhou et al., 2018): the history attended against the target item.

Each history item h gets a weight from an MLP over [h, t, h-t, h*t] (t the
target's embedding); as in the paper the weights are not softmax-normalised,
so the sum keeps how strongly the history matches. The user representation is
that weighted sum (plus a user-ID embedding with ``user_id``), and an MLP on
[user, t, user*t] gives the logit, so ``score`` is not a dot product.
"""
from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn

from ...registry import register
from ...schema import setting
from .base import CFModel, HistoryCFConfig, history_item_table, user_offset_table


@dataclass
class DINConfig(HistoryCFConfig):
    mlp_hidden: List[int] = setting(help="hidden sizes of the prediction MLP", factory=lambda: [80, 40])
    attn_hidden: List[int] = setting(help="hidden sizes of the attention MLP over [h, t, h-t, h*t]",
                                     factory=lambda: [80, 40])


def mlp(sizes, dropout: float) -> nn.Sequential:
    """Linear-ReLU-Dropout layers through ``sizes``; the last layer is linear only."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


@register("cf_model", "DIN")
class DIN(CFModel):
    Config = DINConfig
    supports_cold_items = True  # users come from the history; cold items borrow rows of the item table
    target_aware = True  # the user vector attends over the history against the target item

    def __init__(self, n_users, n_items, rec_cfg, init_std: float = 0.1):
        super().__init__(n_users, n_items, rec_cfg)
        self.max_len = rec_cfg.max_len
        self.history_len = rec_cfg.max_len  # history ids each row must carry
        self.item = history_item_table(n_items, self.dim, init_std)
        self.user = user_offset_table(n_users, self.dim, rec_cfg.user_id)
        self.attn = mlp([4 * self.dim, *rec_cfg.attn_hidden, 1], 0.0)
        self.head = mlp([3 * self.dim, *rec_cfg.mlp_hidden, 1], rec_cfg.dropout)

    def attention(self, his, target):
        """his [B, H] ids (0 = padding), target [B, d] -> weights [B, L], 0 on padding; L = min(H, max_len)."""
        his = his[:, -self.max_len:]
        h = self.item(his)  # [B, L, d]
        t = target[:, None].expand_as(h)
        w = self.attn(torch.cat([h, t, h - t, h * t], dim=-1)).squeeze(-1)  # [B, L]
        return w * (his != 0)

    def user_embed(self, batch):
        """his [B, H], iid [B] (+ uid [B]) -> [B, d]: history summed with target-attention weights."""
        his = batch["his"][:, -self.max_len:]
        w = self.attention(his, self.item(batch["iid"]))
        rep = (w[..., None] * self.item(his)).sum(1)
        if self.user is not None:
            rep = rep + self.user(batch["uid"])
        return rep

    def item_embed(self, item_ids):
        """[N] iid -> [N, d]"""
        return self.item(item_ids)

    def score(self, batch):
        """[B] logits from the MLP on [user, target, user*target] (+ item / user bias)."""
        u = self.user_embed(batch)
        t = self.item(batch["iid"])
        return self.with_biases(self.head(torch.cat([u, t, u * t], dim=-1)).squeeze(-1), batch)
