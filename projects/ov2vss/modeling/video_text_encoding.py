"""VTE: Video Text Encoding (paper III-C, Eqs. 11-12).

Class text embeddings F^T are refined by the window's dense CLIP image features F^V:
F^T_bar = F^T + MHSA(F^T, F^V) (Eq. 11), followed by a residual FFN (Table III: MHSA + FFN is
better than MHSA alone). The residual branches start at zero, so training begins from CLIP's
own text embeddings — the property zero-shot transfer relies on. The cost volume is the cosine
similarity X = cos(F^T_bar, F^V) in N x H x W (Eq. 12). Each class attends to the visual tokens
on its own, so classes are refined ``class_chunk`` at a time (bounded memory, same result).
"""

import torch
import torch.nn.functional as F
from torch import nn


class VideoTextEncoder(nn.Module):
    def __init__(self, dim: int, num_heads: int = 8, use_ffn: bool = True, class_chunk: int = 64):
        super().__init__()
        self.class_chunk = class_chunk
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
        """text F^T [N, D] (shared) or [B, N, D]; visual F^V tokens [B, M, D] -> [B, N, D]."""
        if text.dim() == 2:
            text = text.unsqueeze(0).expand(visual.shape[0], -1, -1)
        kv = self.norm_visual(visual)
        if text.shape[1] <= self.class_chunk:
            return self._refine(text, kv)
        return torch.cat([self._refine(t, kv) for t in text.split(self.class_chunk, dim=1)], dim=1)

    def _refine(self, text: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        text = text + self.attn(self.norm_text(text), kv, kv, need_weights=False)[0]
        if self.ffn is not None:
            text = text + self.ffn(text)
        return text


def cosine_cost_volume(text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """Eq. 12: text [B, N, D] (or [N, D]), visual [B, D, H, W] -> X [B, N, H, W] in [-1, 1]."""
    text = F.normalize(text, dim=-1)
    visual = F.normalize(visual, dim=1)
    if text.dim() == 2:
        return torch.einsum("nd,bdhw->bnhw", text, visual)
    return torch.einsum("bnd,bdhw->bnhw", text, visual)
