"""Class-count-agnostic prediction head (paper Eqs. 12-15; design choices: docs/OFFICIAL_CODE.md).

Every (class, pixel) pair is scored from that class's cost-volume slice joined with the pixel
features, so the same weights serve any vocabulary size:
  X~ = Conv(X)                       per-class conv refinement of the cost volume (shared weights)
  X^ = Linear(Concat[X~, U^1])       Eq. 13, position features from the shallowest backbone map
  X' = Concat[Upsample(X^), O^_t]    Eq. 14, joined with the temporally enhanced features
  logits = phi_seg(X')               Eq. 15
Cost notes: both Linear layers act on a concatenation, so each is split into a per-class part
and a per-pixel part that is computed once and broadcast over classes; decoding happens at
`decoder_stride` and the logits are upsampled. No N x (C' + C) x H x W tensor is built at full
resolution. No normalisation layer runs inside the per-class branch: normalising each class
slice on its own would erase how strongly that class matches, which is the signal. Classes are
decoded ``class_chunk`` at a time (each class is independent of the others), so memory does not
grow with the vocabulary beyond the [B, N, h, w] logits.

With the prompt templates as channels (``MODEL.CLIP.TEMPLATE_MODE`` "channels") the cost volume
is [B, N, T, h, w] and the first conv of X~ takes the T template channels of a class, as the
official code's ``Corr.corr_embed`` does (mmseg/models/decode_heads/hyper_correlation_copy.py
lines 562-575: correlation [B, T, N, H, W], rearranged to (B N) T H W, a 7x7 conv from T = 80
channels, after CAT-Seg); with one template it computes what "mean" mode computes.
"""

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .video_text_encoding import cosine_cost_volume


class OpenVocabularyHead(nn.Module):
    """Eqs. 12-15 for any number of classes (module docstring).

    Args (keywords only, grouped by the tensor they size):
        temporal_dim: channels of the temporally enhanced features O^_t (Eq. 14).
        cost_dim: channels of the refined cost volume X~ per class.
        text_channels: T cost-volume channels per class (1, or the number of templates).
        pos_in_channels: channels of the shallowest backbone map U^1 (Eq. 13).
        pos_dim: channels of its projection.
        decoder_dim: channels of phi_seg's hidden layer (Eq. 15).
        temperature_init: initial temperature of the cosine cost volume (learnt).
        class_chunk: classes decoded at a time (bounds memory for large vocabularies).
    """

    def __init__(
        self,
        *,
        temporal_dim: int,
        cost_dim: int = 32,
        text_channels: int = 1,
        pos_in_channels: int,
        pos_dim: int = 32,
        decoder_dim: int = 64,
        temperature_init: float = 0.07,
        class_chunk: int = 64,
    ):
        super().__init__()
        if class_chunk < 1:
            raise ValueError(f"MODEL.OV2VSS.CLASS_CHUNK={class_chunk}: must be >= 1")
        self.class_chunk = class_chunk
        self.text_channels = text_channels  # T cost-volume channels per class
        # learnable sharpness of the cosine cost volume (CLIP-style logit scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature_init)))
        self.cost_conv = nn.Sequential(
            nn.Conv2d(text_channels, cost_dim, 7, padding=3),
            nn.GELU(),
            nn.Conv2d(cost_dim, cost_dim, 3, padding=1),
        )
        self.pos_proj = nn.Conv2d(pos_in_channels, pos_dim, 1)
        # Eq. 13's Linear on Concat[X~, U^1], split into its two halves
        self.cost_in = nn.Conv2d(cost_dim, cost_dim, 1)
        self.pos_in = nn.Conv2d(pos_dim, cost_dim, 1, bias=False)
        # first layer of phi_seg on Concat[X^, O^_t], split likewise
        self.dec_cost = nn.Conv2d(cost_dim, decoder_dim, 1)
        self.dec_temporal = nn.Conv2d(temporal_dim, decoder_dim, 1, bias=False)
        self.decoder = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(decoder_dim, decoder_dim, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(decoder_dim, 1, 1),
        )

    def forward(
        self, cost: torch.Tensor, u1: torch.Tensor, o_hat: torch.Tensor, size: Tuple[int, int]
    ) -> torch.Tensor:
        """cost X [B, N, h, w] (or [B, N, T, h, w], templates as channels); u1 [B, C1, ., .];
        o_hat [B, C, ., .] -> logits [B, N, *size]."""
        channels = cost.shape[2] if cost.dim() == 5 else 1
        if channels != self.text_channels:
            raise ValueError(
                f"the head was built for {self.text_channels} cost-volume channel(s) per class "
                f"(MODEL.CLIP.TEMPLATE_MODE / PROMPT_TEMPLATES), got a cost volume of shape "
                f"{tuple(cost.shape)}"
            )
        # the per-pixel halves of Eqs. 13-14, computed once for every class
        pos = self.pos_in(self.pos_proj(F.adaptive_avg_pool2d(u1, size)))  # [B, C', h, w]
        o_hat = F.interpolate(o_hat, size=size, mode="bilinear", align_corners=False)
        temporal = self.dec_temporal(o_hat)
        num_classes = cost.shape[1]
        if num_classes <= self.class_chunk:
            return self._decode_classes(cost, pos, temporal, size)
        chunks = cost.split(self.class_chunk, dim=1)
        return torch.cat([self._decode_classes(c, pos, temporal, size) for c in chunks], dim=1)

    def _decode_classes(
        self, cost: torch.Tensor, pos: torch.Tensor, temporal: torch.Tensor, size: Tuple[int, int]
    ) -> torch.Tensor:
        bsz, num_classes = cost.shape[:2]
        x = self.cost_conv(
            cost.reshape(bsz * num_classes, self.text_channels, *cost.shape[-2:])
            * self.log_scale.exp()
        )
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = self.cost_in(x).view(bsz, num_classes, -1, *size) + pos.unsqueeze(1)  # X^ (Eq. 13)
        x = self.dec_cost(x.flatten(0, 1)).view(bsz, num_classes, -1, *size) + temporal.unsqueeze(1)
        return self.decoder(x.flatten(0, 1)).view(bsz, num_classes, *size)


class TextAlignedAuxHead(nn.Module):
    """phi_aux of Eq. 7, kept vocabulary-free: O_t is projected into the CLIP text space and
    scored by cosine similarity with the class embeddings (so checkpoints carry no class count)."""

    def __init__(self, in_dim: int, embed_dim: int, temperature_init: float = 0.07):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, 3, padding=1), nn.GELU(), nn.Conv2d(in_dim, embed_dim, 1)
        )
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature_init)))

    def forward(self, o_t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """o_t [B, C, H, W], text [N, D] or [B, N, D] -> logits [B, N, H, W]. With templates as
        channels the caller passes their mean (:func:`~.clip.templates.template_mean`)."""
        return cosine_cost_volume(text, self.proj(o_t)) * self.log_scale.exp()
