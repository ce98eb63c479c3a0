"""FECE projector: maps a collaborative embedding to k LLM input-token embeddings."""
import torch
import torch.nn as nn


class Projector(nn.Module):
    """MLP cf_dim -> cf_dim*mid_times -> llm_dim*k.

    forward(x [B, cf_dim]) -> [B, k, llm_dim]
    """

    def __init__(self, cf_dim: int, llm_dim: int, token_num: int = 1, mid_times: int = 10, drop: float = 0.0):
        super().__init__()
        self.token_num, self.llm_dim = token_num, llm_dim
        self.mlp = nn.Sequential(
            nn.Linear(cf_dim, cf_dim * mid_times), nn.ReLU(), nn.Dropout(drop),
            nn.Linear(cf_dim * mid_times, llm_dim * token_num))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).view(x.shape[0], self.token_num, self.llm_dim)
