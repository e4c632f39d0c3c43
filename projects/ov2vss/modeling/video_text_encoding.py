"""VTE: Video Text Encoding (paper III-C, Eqs. 11-12).

Class text embeddings F^T are refined by the window's dense CLIP image features F^V:
F^T_bar = F^T + MHSA(F^T, F^V) (Eq. 11), followed by a residual FFN (Table III: MHSA + FFN is
better than MHSA alone). The residual branches start at zero, so training begins from CLIP's
own text embeddings — the property zero-shot transfer relies on. The cost volume is the cosine
similarity X = cos(F^T_bar, F^V) in N x H x W (Eq. 12). Each class attends to the visual tokens
on its own, so classes are refined ``class_chunk`` at a time (bounded memory, same result).

With the templates as channels (``MODEL.CLIP.TEMPLATE_MODE`` "channels") F^T is [N, T, D] and
every (class, template) embedding is a query of its own, as in the official code's
``VideoSpecificPrompt`` (mmseg/models/decode_heads/cat_zeroshot_classifier.py lines 88-120:
the T template embeddings of a class attend to the visual tokens, cross-attention only, then
the MLP, token-wise); the cost volume is then [B, N, T, H, W].
"""

import torch
import torch.nn.functional as F
from torch import nn


class VideoTextEncoder(nn.Module):
    """Eq. 11. ``template_channels``: the text is [N, T, D] / [B, N, T, D] (one embedding per
    template) instead of [N, D] / [B, N, D]."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        use_ffn: bool = True,
        class_chunk: int = 64,
        template_channels: bool = False,
    ):
        super().__init__()
        self.class_chunk = class_chunk
        self.template_channels = template_channels
        self.norm_text = nn.LayerNorm(dim)
        self.norm_visual = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)
        self.ffn = None
        if use_ffn:
            self.ffn = nn.Sequential(
                nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
            )
            nn.init.zeros_(self.ffn[-1].weight)
            nn.init.zeros_(self.ffn[-1].bias)

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """text F^T [N, D] (shared) or [B, N, D] — with ``template_channels`` [N, T, D] or
        [B, N, T, D]; visual F^V tokens [B, M, D] -> [B, N, D] (or [B, N, T, D])."""
        per_class = 1
        if self.template_channels:
            if text.dim() not in (3, 4):
                raise ValueError(
                    "VTE with templates as channels: text must be [(B,) N, T, D], got "
                    f"{tuple(text.shape)}"
                )
            if text.dim() == 3:
                text = text.unsqueeze(0).expand(visual.shape[0], -1, -1, -1)
            shape = text.shape
            per_class = shape[2]
            text = text.reshape(shape[0], shape[1] * per_class, shape[3])
        elif text.dim() == 2:
            text = text.unsqueeze(0).expand(visual.shape[0], -1, -1)
        kv = self.norm_visual(visual)
        chunk = self.class_chunk * per_class
        if text.shape[1] <= chunk:
            out = self._refine(text, kv)
        else:
            out = torch.cat([self._refine(t, kv) for t in text.split(chunk, dim=1)], dim=1)
        return out.view(shape) if self.template_channels else out

    def _refine(self, text: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        text = text + self.attn(self.norm_text(text), kv, kv, need_weights=False)[0]
        if self.ffn is not None:
            text = text + self.ffn(text)
        return text


def cosine_cost_volume(text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """Eq. 12: text [N, D], [B, N, D] or [B, N, T, D] (templates as channels); visual
    [B, D, H, W] -> X [B, N, H, W] (or [B, N, T, H, W]) in [-1, 1]."""
    text = F.normalize(text, dim=-1)
    visual = F.normalize(visual, dim=1)
    if text.dim() == 2:
        return torch.einsum("nd,bdhw->bnhw", text, visual)
    if text.dim() == 4:
        return torch.einsum("bntd,bdhw->bnthw", text, visual)
    return torch.einsum("bnd,bdhw->bnhw", text, visual)
