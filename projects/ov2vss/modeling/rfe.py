"""RFE: Random Frame Enhancement (paper III-B, Eqs. 8-10).

The distant ("random") frame's P2T-pooled features of every scale are concatenated and
projected, D_random = Linear(Concat[D^l, ..., D^L]) (Eq. 8); soft object regions
L_d = Conv(D_random) and region features L_r = softmax(L_d) D_random, OCR-style (Eq. 9);
then multi-head cross-attention with Q = FC(O_t), K = V = FC(L_r) gives
O^_t = O_t + softmax(Q K^T / sqrt(C)) V (Eq. 10, with a residual and LayerNorm).
"""

from typing import Sequence

import torch
from torch import nn


class RandomFrameEnhancement(nn.Module):
    def __init__(self, dim: int, num_scales: int, num_regions: int = 16, num_heads: int = 8):
        super().__init__()
        self.merge = nn.Linear(num_scales * dim, dim)
        self.region_logits = nn.Conv1d(dim, num_regions, 1)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def regions(self, random_pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """L_r [B, K, C] from the random frame's pooled scales [B, P, C] (Eqs. 8-9)."""
        d = self.merge(torch.cat(list(random_pooled), dim=-1))  # [B, P, C]
        weights = torch.softmax(self.region_logits(d.transpose(1, 2)), dim=-1)  # [B, K, P]
        return weights @ d

    def forward(self, o_t: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """o_t [B, C, H, W], regions L_r [B, K, C] -> O^_t [B, C, H, W] (Eq. 10)."""
        q = o_t.flatten(2).transpose(1, 2)
        out, _ = self.attn(q, regions, regions, need_weights=False)
        return self.norm(q + out).transpose(1, 2).reshape(o_t.shape)
