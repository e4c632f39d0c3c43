"""RFE: Random Frame Enhancement (paper III-B, Eqs. 8-10).

The distant ("random") frame's P2T-pooled features of every scale are concatenated and
projected, D_random = Linear(Concat[D^l, ..., D^L]) (Eq. 8); soft object regions
L_d = Conv(D_random) and region features L_r = softmax(L_d) D_random, OCR-style (Eq. 9);
then multi-head cross-attention with Q = FC(O_t), K = V = FC(L_r) gives
O^_t = O_t + softmax(Q K^T / sqrt(C)) V (Eq. 10, with a residual and LayerNorm).

The Conv of Eq. 9 (``MODEL.OV2VSS.RFE.REGION_HEAD``):

* "linear": a 1x1 conv over the tokens, K = ``NUM_REGIONS`` region logits per token.
* "conv3x3": the official code's ``dsn_head`` (mmseg/models/decode_heads/segformer_voca.py
  lines 295-301, applied at line 432): conv 3x3 - BatchNorm - ReLU - conv 1x1 to K (81 there).
  It runs on the tokens laid out as a [1, C, B, P] image (line 401), so for one window the 3x3
  kernel meets a single row: a 3-tap convolution along the token order. Here it is exactly that,
  a Conv1d(C, C, 3) along the tokens of each window — without the official layout's mixing of
  different windows of a batch (its image rows) — then BatchNorm, ReLU and the 1x1 conv
  (the official Dropout2d(0.05) and 512 hidden channels are not reproduced; the width is C).
"""

from typing import Sequence

import torch
from torch import nn

REGION_HEADS = ("linear", "conv3x3")


class RandomFrameEnhancement(nn.Module):
    def __init__(
        self,
        dim: int,
        num_scales: int,
        num_regions: int = 16,
        num_heads: int = 8,
        region_head: str = "linear",
    ):
        super().__init__()
        if region_head not in REGION_HEADS:
            raise ValueError(
                f"MODEL.OV2VSS.RFE.REGION_HEAD={region_head!r}: expected one of {REGION_HEADS}"
            )
        if num_regions < 1:
            raise ValueError(f"MODEL.OV2VSS.RFE.NUM_REGIONS={num_regions}: must be >= 1")
        self.merge = nn.Linear(num_scales * dim, dim)
        if region_head == "linear":
            self.region_logits = nn.Conv1d(dim, num_regions, 1)
        else:
            self.region_logits = nn.Sequential(
                nn.Conv1d(dim, dim, 3, padding=1),
                nn.BatchNorm1d(dim),
                nn.ReLU(),
                nn.Conv1d(dim, num_regions, 1),
            )
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def regions(self, random_pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """L_r [B, K, C] from the random frame's pooled scales [B, P, C] (Eqs. 8-9)."""
        counts = [t.shape[1] for t in random_pooled]
        if len(set(counts)) != 1:
            raise ValueError(
                f"RFE: the random frame's scales pool to {counts} tokens; every scale must give "
                "the same P (Eq. 8 concatenates them token by token)"
            )
        d = self.merge(torch.cat(list(random_pooled), dim=-1))  # [B, P, C]
        weights = torch.softmax(self.region_logits(d.transpose(1, 2)), dim=-1)  # [B, K, P]
        return weights @ d

    def forward(self, o_t: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """o_t [B, C, H, W], regions L_r [B, K, C] -> O^_t [B, C, H, W] (Eq. 10)."""
        q = o_t.flatten(2).transpose(1, 2)
        out, _ = self.attn(q, regions, regions, need_weights=False)
        return self.norm(q + out).transpose(1, 2).reshape(o_t.shape)
