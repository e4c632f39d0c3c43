"""STCF: Spatial-Temporal Context Fusion (paper III-A, Eqs. 3-7).

Gradual fusion over the window t-k_1 -> ... -> t-k_n -> t at every backbone scale l:
D_past starts as the P2T-pooled feature of the first frame (Eq. 2); for each next frame,
Q = FC(U), K = FC(D_past), V = FC(D_past) (Eq. 3), A = softmax(Q K^T / sqrt(c)) and
N = A V (Eq. 4), and D_past <- f(N) (pooled again, so keys stay P tokens: attention is
HW x P, never HW x HW). For the target frame the per-scale attention maps are aggregated from
deep to shallow, B^L = A^L, B^l = Conv(Upsample(B^{l+1}) + A^l) (Eq. 5, maps seen as
P x H_l x W_l images), and O_t = B^1 V^1_past (Eq. 6). O_t is then fused with the target's own
features by channel concatenation + Linear ("concat") or element-wise addition ("add") — the
"fusing strategy" ablation of Table III. The auxiliary loss of Eq. 7 is applied by the
meta-architecture on the returned feature.

The Conv of Eq. 5 (``MODEL.OV2VSS.STCF.AGGREGATE``): "tokens", a Conv2d(P, P, 3) that mixes the
P attention maps (needs a fixed P: P2T "grid" mode), or "shared", one Conv2d(1, 1, 3) applied
to every token's map on its own, as the official code's ``HPNLearner_topk2`` does
(mmseg/models/decode_heads/hypercorre.py lines 44-114: attention maps reshaped to
(B * P, 1, h, w)); it works for any P, so also for P2T "ratio" mode, whose P depends on the
input size. (The official blocks add GroupNorm + ReLU after each conv and use 5 x 5 kernels on
two scales; here it is one 3 x 3 conv, as in "tokens".)
"""

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .p2t_pooling import P2TPooling


class SpatialTemporalContextFusion(nn.Module):
    """Fuse a window's multi-scale features into the target frame's features O_t.

    Args:
        dim: channel width C of every (already projected) scale.
        pools: the P2T pooling f(.) of each scale (shared with the rest of the model).
        fusion: "concat" or "add" (how O_t joins the target's own finest-scale feature).
        aggregate: "tokens" or "shared" (the Conv of Eq. 5, see the module docstring).
    """

    def __init__(
        self,
        dim: int,
        pools: Sequence[P2TPooling],
        fusion: str = "concat",
        aggregate: str = "tokens",
    ):
        super().__init__()
        if fusion not in ("concat", "add"):
            raise ValueError(f"MODEL.OV2VSS.STCF.FUSION={fusion!r}: expected 'concat' or 'add'")
        if aggregate not in ("tokens", "shared"):
            raise ValueError(
                f"MODEL.OV2VSS.STCF.AGGREGATE={aggregate!r}: expected 'tokens' or 'shared'"
            )
        num_scales = len(pools)
        num_tokens = pools[0].num_tokens
        if any(p.num_tokens != num_tokens for p in pools):
            raise ValueError("all scales must pool to the same number of tokens P")
        if aggregate == "tokens" and num_tokens is None:
            raise ValueError(
                "MODEL.OV2VSS.STCF.AGGREGATE='tokens' mixes the P attention maps with a "
                "Conv2d(P, P) and needs a fixed P, but MODEL.OV2VSS.POOL_MODE='ratio' gives a P "
                "that depends on the input size: use AGGREGATE 'shared'"
            )
        self.aggregate_mode = aggregate
        self.pools = pools
        self.scale = dim**-0.5
        self.q_proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_scales))
        self.k_proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_scales))
        self.v_proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_scales))
        # Eq. 5: one conv per aggregation step, on the P attention channels ("tokens") or on
        # each token's map alone ("shared")
        channels = num_tokens if aggregate == "tokens" else 1
        self.aggregate = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_scales - 1)
        )
        self.fusion = fusion
        self.fuse = nn.Linear(2 * dim, dim) if fusion == "concat" else None
        self.norm = nn.LayerNorm(dim)

    def attention(self, scale: int, feat: torch.Tensor, past: torch.Tensor):
        """A = softmax(Q K^T / sqrt(c)) [B, HW, P] and V [B, P, C] for one scale (Eqs. 3-4)."""
        q = self.q_proj[scale](feat.flatten(2).transpose(1, 2))
        k = self.k_proj[scale](past)
        v = self.v_proj[scale](past)
        return torch.softmax(q @ k.transpose(1, 2) * self.scale, dim=-1), v

    def step(self, feats: List[torch.Tensor], past: List[torch.Tensor]) -> List[torch.Tensor]:
        """One intermediate fusion step: D_past <- f(A V) at every scale."""
        new_past = []
        for s, (feat, d) in enumerate(zip(feats, past)):
            attn, v = self.attention(s, feat, d)
            n = (attn @ v).transpose(1, 2).reshape(feat.shape)
            new_past.append(self.pools[s](n))
        return new_past

    def finish(self, feats: List[torch.Tensor], past: List[torch.Tensor]) -> torch.Tensor:
        """Target step: cross-scale affinity aggregation (Eq. 5), O_t = B^1 V^1 (Eq. 6), fusion."""
        b = None
        values = None
        for s in reversed(range(len(feats))):
            attn, v = self.attention(s, feats[s], past[s])
            h, w = feats[s].shape[-2:]
            a = attn.transpose(1, 2).reshape(attn.shape[0], -1, h, w)  # [B, P, H_l, W_l]
            if b is None:
                b = a
            else:
                if b.shape[1] != a.shape[1]:
                    raise ValueError(
                        f"STCF: scale {s} has {a.shape[1]} tokens, scale {s + 1} {b.shape[1]}: "
                        "every scale must pool to the same P (check the backbone's strides)"
                    )
                up = F.interpolate(b, size=(h, w), mode="bilinear", align_corners=False)
                b = self._aggregate(s, up + a)
            values = v
        target = feats[0]
        o_t = b.flatten(2).transpose(1, 2) @ values  # [B, H_1 W_1, C]
        own = target.flatten(2).transpose(1, 2)
        fused = self.fuse(torch.cat([own, o_t], dim=-1)) if self.fuse is not None else own + o_t
        return self.norm(fused).transpose(1, 2).reshape(target.shape)

    def _aggregate(self, scale: int, maps: torch.Tensor) -> torch.Tensor:
        """The Conv of Eq. 5 on [B, P, h, w] maps."""
        if self.aggregate_mode == "tokens":
            return self.aggregate[scale](maps)
        bsz, num_tokens, h, w = maps.shape
        out = self.aggregate[scale](maps.reshape(bsz * num_tokens, 1, h, w))
        return out.view(bsz, num_tokens, h, w)

    def forward(
        self, window_feats: List[List[torch.Tensor]], first_pooled: List[torch.Tensor]
    ) -> torch.Tensor:
        """window_feats[i][l]: frame i's projected scale-l map [B, C, H_l, W_l], target last;
        first_pooled[l]: f(U^l) of frame 0 [B, P, C]. Returns O_t [B, C, H_1, W_1]."""
        past = list(first_pooled)
        for frame_feats in window_feats[1:-1]:
            past = self.step(frame_feats, past)
        return self.finish(window_feats[-1], past)
