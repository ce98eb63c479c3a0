"""LightGCN (He et al., 2020): ID embeddings smoothed over the user-item graph.

E^(k+1) = D^-1/2 A D^-1/2 E^(k) on the bipartite graph of the training split
(users 0..U-1, then items U..U+I-1), E^(0) the learned ID tables; the final
embedding is the mean of E^(0..L). The normalised adjacency is kept as buffers
(indices [2, nnz], values [nnz]), so a weight file carries its graph: a model
built for stage 2 (no ``fit_data``) loads it and reproduces the trained
embeddings.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from ...registry import register
from ...schema import Choice, setting
from .base import CFConfig, CFModel


def normalized_adjacency(users, items, n_users: int, n_items: int):
    """Symmetric-normalised bipartite adjacency of (user, item) edges.

    users, items: [E] int64 tensors (duplicates count once).
    Returns (indices [2, 2E'], values [2E']) over n_users + n_items nodes, with
    value 1/sqrt(deg(u) deg(i)) on both (u, i) and (i, u).
    """
    n = n_users + n_items
    key = torch.unique(users.long() * n_items + items.long())
    u, i = key // n_items, key % n_items
    deg_u = torch.bincount(u, minlength=n_users).double()
    deg_i = torch.bincount(i, minlength=n_items).double()
    val = (deg_u[u].rsqrt() * deg_i[i].rsqrt()).float()
    rows = torch.cat([u, i + n_users])
    cols = torch.cat([i + n_users, u])
    index = torch.stack([rows, cols])
    return index, torch.cat([val, val]), n


class GraphEdges(Choice):
    positive = "positive"  # label-1 interactions
    all = "all"


@dataclass
class LightGCNConfig(CFConfig):
    n_layers: int = setting(2, "propagation layers")
    graph_edges: GraphEdges = setting(GraphEdges.positive, "`positive` (label-1 interactions) or `all` as graph edges")

    def __post_init__(self):
        super().__post_init__()
        if self.n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {self.n_layers}")


@register("cf_model", "LightGCN")
class LightGCN(CFModel):
    Config = LightGCNConfig
    supports_cold_start = True
    fits_data = True  # the graph comes from the training interactions

    def __init__(self, n_users, n_items, rec_cfg, init_std: float = 0.1):
        super().__init__(n_users, n_items, rec_cfg)
        self.n_layers = rec_cfg.n_layers
        self.graph_edges = rec_cfg.graph_edges
        self.user = nn.Embedding(n_users, self.dim)
        self.item = nn.Embedding(n_items, self.dim)
        nn.init.normal_(self.user.weight, std=init_std)
        nn.init.normal_(self.item.weight, std=init_std)
        # An empty graph until fit_data or a loaded weight file fills it.
        self.register_buffer("adj_index", torch.zeros(2, 0, dtype=torch.long))
        self.register_buffer("adj_value", torch.zeros(0))
        self._cache = None

    def fit_data(self, data) -> None:
        """Build the graph from ``data.splits['train']`` (label-1 rows or all rows)."""
        train = data.splits["train"]
        if self.graph_edges == "positive":
            train = train[train["label"] == 1]
        users = torch.tensor(train["uid"].to_numpy(), dtype=torch.long)
        items = torch.tensor(train["iid"].to_numpy(), dtype=torch.long)
        index, value, n = normalized_adjacency(users, items, self.n_users, self.n_items)
        # Stored coalesced (sorted, unique), so propagate() need not sort per step.
        adj = torch.sparse_coo_tensor(index, value, (n, n), check_invariants=True).coalesce()
        index, value = adj.indices(), adj.values()
        self.adj_index = index.to(self.adj_index.device)
        self.adj_value = value.to(self.adj_value.device)
        self._cache = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The graph's size comes from the data it was built on: take the saved
        # buffers' shapes before the usual copy (which needs equal shapes).
        for name in ("adj_index", "adj_value"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        self._cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def propagate(self):
        """Final tables: (users [n_users, d], items [n_items, d]) = mean over layers 0..L, in the
        dtype of the ID tables."""
        ego = torch.cat([self.user.weight, self.item.weight])  # [U+I, d]
        n = ego.shape[0]
        # In fp32 whatever the tables' dtype (bf16 under FSDP's CUDA precision policy, which casts
        # parameters but not the graph buffers) and with autocast off (it would run the product in
        # bf16): CUDA's sparse-dense product takes float/double only, the CPU's one dtype on both
        # sides, and the degree weights and the sum over layers keep fp32's precision. The result
        # goes back to the tables' dtype, the one the model's other parts compute in.
        adj = torch.sparse_coo_tensor(self.adj_index, self.adj_value.float(), (n, n), is_coalesced=True,
                                      check_invariants=False)
        with torch.autocast(ego.device.type, enabled=False):
            layer = total = ego.float()
            for _ in range(self.n_layers):
                layer = torch.sparse.mm(adj, layer)
                total = total + layer
            final = (total / (self.n_layers + 1)).to(ego.dtype)
        return final[:self.n_users], final[self.n_users:]

    def _tables(self):
        """Propagated tables; reused while no gradient is wanted and nothing changed.

        Evaluation calls this once per batch; the key (parameter versions and
        storage, graph) notices optimizer steps and loaded weights.
        """
        if torch.is_grad_enabled():
            return self.propagate()
        key = (self.user.weight._version, self.item.weight._version, self.user.weight.data_ptr(),
               self.item.weight.data_ptr(), self.adj_value.data_ptr(), self.adj_value.shape[0])
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.propagate())
        return self._cache[1]

    def user_embed(self, batch):
        """[B] uid -> [B, d]"""
        return self._tables()[0][batch["uid"]]

    def item_embed(self, item_ids):
        """[N] iid -> [N, d]"""
        return self._tables()[1][item_ids]
