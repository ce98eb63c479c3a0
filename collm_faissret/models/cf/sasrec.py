"""SASRec (Kang & McAuley, 2018): causal self-attention over the liked-item history.

The user is the encoding of the last ``max_len`` history items at the last
(most recent) position; the logit is its dot product with the target item's
embedding from the same item table. Trained pointwise with BCE on CoLLM's
rows, like every CF model here.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import ConfigError
from ...registry import register
from ...schema import setting
from .base import CFModel, HistoryCFConfig, history_item_table, user_offset_table


@dataclass
class SASRecConfig(HistoryCFConfig):
    n_heads: int = setting(2, "attention heads")
    n_blocks: int = setting(2, "transformer blocks")

    def __post_init__(self):
        super().__post_init__()
        if self.n_heads < 1 or self.embedding_size % self.n_heads:
            raise ValueError(f"embedding_size {self.embedding_size} is not divisible by n_heads {self.n_heads}")


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        if dim % n_heads:
            raise ConfigError(f"rec_config.embedding_size {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.ln_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)
        self.p_attn = dropout

    def forward(self, x, allowed):
        """x [B, L, d]; allowed [B, 1, L, L] bool (query row may read key column) -> [B, L, d]"""
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                             dropout_p=self.p_attn if self.training else 0.0)  # [B, h, L, d/h]
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


@register("cf_model", "SASRec")
class SASRec(CFModel):
    Config = SASRecConfig
    supports_cold_items = True  # users come from the history; cold items borrow rows of the item table

    def __init__(self, n_users, n_items, rec_cfg, init_std: float = 0.02):
        # A small item init: the encoding leaves the final LayerNorm with entries
        # of size ~1, so items at std 0.1 would start every logit with noise of
        # std ~0.1 * sqrt(d) that training then memorises (worse valid AUC).
        super().__init__(n_users, n_items, rec_cfg)
        self.max_len = rec_cfg.max_len
        self.history_len = rec_cfg.max_len  # history ids each row must carry
        self.item = history_item_table(n_items, self.dim, init_std)
        self.pos = nn.Embedding(self.max_len, self.dim)
        nn.init.normal_(self.pos.weight, std=init_std)
        self.drop = nn.Dropout(rec_cfg.dropout)
        self.blocks = nn.ModuleList(Block(self.dim, rec_cfg.n_heads, rec_cfg.dropout) for _ in range(rec_cfg.n_blocks))
        self.ln_final = nn.LayerNorm(self.dim)
        self.user = user_offset_table(n_users, self.dim, rec_cfg.user_id)

    def encode(self, his):
        """his [B, H] item ids, oldest first, 0-padded on the left -> [B, L, d], L = min(H, max_len)."""
        his = his[:, -self.max_len:]
        n = his.shape[1]
        valid = his != 0  # [B, L]
        x = self.item(his) * math.sqrt(self.dim) + self.pos.weight[self.max_len - n:]  # right-aligned positions
        x = self.drop(x)
        causal = torch.ones(n, n, dtype=torch.bool, device=his.device).tril()
        # A query reads earlier real items; every position also reads itself, so
        # padding rows (and a fully empty history) never have all keys masked.
        own = torch.eye(n, dtype=torch.bool, device=his.device)
        allowed = (causal & valid[:, None, :]) | own  # [B, L, L]
        allowed = allowed[:, None]  # [B, 1, L, L]: broadcast over heads
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_final(x)

    def user_embed(self, batch):
        """his [B, H] (+ uid [B]) -> [B, d]: the encoding at the most recent position."""
        rep = self.encode(batch["his"])[:, -1]
        if self.user is not None:
            rep = rep + self.user(batch["uid"])
        return rep

    def item_embed(self, item_ids):
        """[N] iid -> [N, d]"""
        return self.item(item_ids)
