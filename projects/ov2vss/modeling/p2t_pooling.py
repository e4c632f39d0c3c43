"""P2T pooling f(U) (paper Eq. 2; Wu et al., "P2T: Pyramid Pooling Transformer").

Adaptive average pooling of a feature map to a fixed set of grids (e.g. 1, 2, 3, 6 -> 50
tokens), each grid refined by a residual depthwise 3x3 conv, then flattened and normalised.
Every scale thus yields the same number P of tokens, and token p refers to the same grid cell
at every scale, which is what lets STCF add attention maps across scales (Eq. 5) and keeps
attention at HW x P instead of HW x HW.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class P2TPooling(nn.Module):
    """[B, C, H, W] -> [B, P, C] with P = sum(s * s for s in pool_sizes)."""

    def __init__(self, channels: int, pool_sizes: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        if not pool_sizes or any(int(s) < 1 for s in pool_sizes):
            raise ValueError(
                f"MODEL.OV2VSS.POOL_SIZES must be positive grid sizes, got {pool_sizes}"
            )
        self.pool_sizes = tuple(int(s) for s in pool_sizes)
        self.dw_convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels) for _ in self.pool_sizes
        )
        self.norm = nn.LayerNorm(channels)

    @property
    def num_tokens(self) -> int:
        return sum(s * s for s in self.pool_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = []
        for size, conv in zip(self.pool_sizes, self.dw_convs):
            pooled = F.adaptive_avg_pool2d(x, size)
            tokens.append((pooled + conv(pooled)).flatten(2))
        return self.norm(torch.cat(tokens, dim=2).transpose(1, 2))
