"""P2T pooling f(U) (paper Eq. 2; Wu et al., "P2T: Pyramid Pooling Transformer").

Adaptive average pooling of a feature map to a set of grids, each grid refined by a residual
depthwise 3x3 conv, then flattened and normalised. Two ways to choose the grids
(``MODEL.OV2VSS.POOL_MODE``):

* "grid": fixed grids (``POOL_SIZES``, e.g. 1, 2, 3, 6 -> 50 tokens), whatever the input size.
* "ratio": the official code's ``pooling_mhsa`` (mmseg/models/decode_heads/hypercorre.py
  lines 134-165): ratio r gives a grid of ``round(h / r) x round(w / r)`` of the map it pools
  (Python's ``round``, halves to even), r = 2, 4, 6, 8 — 330 tokens on the 30 x 30 map of a
  480 x 480 crop. There every map is SAM's 1/16 output; here the scales have strides 4..32, so
  the ratios divide the map of stride ``ratio_stride`` (16) at every scale: each scale computes
  that size from its own map and stride (``h * stride / ratio_stride``), a coarser map is pooled
  to the same grids (adaptive pooling then repeats cells). The token count then depends on the
  input size (never a grid smaller than 1 x 1), but it is the same at every scale of a frame and
  for every frame of one size.

Either way every scale of a frame yields the same number P of tokens, and token p refers to the
same grid cell at every scale, which is what lets STCF add attention maps across scales (Eq. 5)
and RFE concatenate the scales token by token (Eq. 8); attention stays HW x P, never HW x HW.
"""

from fractions import Fraction
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

POOL_MODES = ("grid", "ratio")


class P2TPooling(nn.Module):
    """[B, C, H, W] -> [B, P, C]; P = sum of the grid cells (see the module docstring).

    Args:
        channels: C.
        pool_sizes: the grids of "grid" mode.
        mode: "grid" or "ratio".
        ratios: the reduction ratios of "ratio" mode.
        stride: the stride of the maps this pooling receives ("ratio" mode).
        ratio_stride: the stride whose map the ratios divide ("ratio" mode).
    """

    def __init__(
        self,
        channels: int,
        pool_sizes: Sequence[int] = (1, 2, 3, 6),
        *,
        mode: str = "grid",
        ratios: Sequence[int] = (2, 4, 6, 8),
        stride: int = 16,
        ratio_stride: int = 16,
    ):
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"MODEL.OV2VSS.POOL_MODE={mode!r}: expected one of {POOL_MODES}")
        if mode == "grid" and (not pool_sizes or any(int(s) < 1 for s in pool_sizes)):
            raise ValueError(
                f"MODEL.OV2VSS.POOL_SIZES must be positive grid sizes, got {pool_sizes}"
            )
        if mode == "ratio" and (not ratios or any(int(r) < 1 for r in ratios)):
            raise ValueError(f"MODEL.OV2VSS.POOL_RATIOS must be positive ratios, got {ratios}")
        if mode == "ratio" and (int(stride) < 1 or int(ratio_stride) < 1):
            raise ValueError(
                f"P2T ratio mode needs positive strides, got stride={stride}, "
                f"MODEL.OV2VSS.POOL_RATIO_STRIDE={ratio_stride}"
            )
        self.mode = mode
        self.pool_sizes = tuple(int(s) for s in pool_sizes) if mode == "grid" else ()
        self.ratios = tuple(int(r) for r in ratios) if mode == "ratio" else ()
        self.stride = int(stride)
        self.ratio_stride = int(ratio_stride)
        levels = self.pool_sizes if mode == "grid" else self.ratios
        self.dw_convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels) for _ in levels
        )
        self.norm = nn.LayerNorm(channels)

    @property
    def num_tokens(self) -> Optional[int]:
        """P in "grid" mode; None in "ratio" mode (it depends on the input size)."""
        if self.mode != "grid":
            return None
        return sum(s * s for s in self.pool_sizes)

    def grid_sizes(self, height: int, width: int) -> List[Tuple[int, int]]:
        """The pooled grids (rows, columns) of a height x width input map."""
        if self.mode == "grid":
            return [(s, s) for s in self.pool_sizes]
        sizes = []
        for r in self.ratios:
            # round(h16 / r) with h16 = h * stride / ratio_stride, in exact arithmetic
            rows = round(Fraction(height * self.stride, self.ratio_stride * r))
            cols = round(Fraction(width * self.stride, self.ratio_stride * r))
            sizes.append((max(1, rows), max(1, cols)))
        return sizes

    def token_count(self, height: int, width: int) -> int:
        """P for a height x width input map."""
        return sum(h * w for h, w in self.grid_sizes(height, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = []
        for size, conv in zip(self.grid_sizes(*x.shape[-2:]), self.dw_convs):
            pooled = F.adaptive_avg_pool2d(x, size)
            tokens.append((pooled + conv(pooled)).flatten(2))
        return self.norm(torch.cat(tokens, dim=2).transpose(1, 2))
