"""Dense CLIP image features F^V: the patch tokens of an open_clip ViT at any input size.

F^V feeds the video text encoding (paper Eq. 11) and the cost volume X = cos(F^T, F^V)
(Eq. 12). The position embedding is interpolated to the patch grid, and the last block of the
image tower runs in one of two ways (``MODEL.CLIP.DENSE_MODE``):

* "qk": the block as CLIP computes it (query-key self-attention, residual, FFN).
* "vv": the official OV2VSS code's dense path (``ResidualAttentionBlock.forward_dense`` in
  mmseg/models/decode_heads/third_party/model_vpt.py, inherited from CAT-Seg). The query-key
  attention of the last block is dropped: every token keeps only its own value,
  ``x + out_proj(v_proj(ln_1(x)))``, and the block's FFN residual follows unchanged,
  ``x + mlp(ln_2(x))``. This is MaskCLIP's value path (each token attends to itself only) with
  the block's residual and FFN kept; no value-value attention matrix is formed. Without the
  global q-k mixing of the last block, a frozen CLIP keeps the locality of its patch features.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

DENSE_MODES = ("qk", "vv")  # MODEL.CLIP.DENSE_MODE (module docstring)


def patch_grid(h: int, w: int, short_side: int, patch_size: int) -> Tuple[int, int]:
    """The patch grid (gh, gw) of an h x w frame resized so that its short side is about
    ``short_side`` (MODEL.CLIP.INPUT_SIZE) and both sides are multiples of ``patch_size``."""
    scale = short_side / min(h, w)
    return max(1, round(h * scale / patch_size)), max(1, round(w * scale / patch_size))


def vit_patch_tokens(
    visual: nn.Module,
    x: torch.Tensor,
    out_layers: Optional[Sequence[int]] = None,
    last_block: str = "qk",
) -> List[torch.Tensor]:
    """Run an open_clip VisionTransformer on normalised images of any size (multiple of the patch).

    The position embedding is interpolated to the patch grid. Returns the patch tokens
    (class token dropped) after each block in `out_layers` (1-based, in that order), or after
    the last block. ``last_block="vv"`` runs the tower's last block as the official code's
    value path (:func:`value_path_block`) instead of as CLIP does ("qk").
    """
    x = visual.conv1(x)  # [B, width, gh, gw]
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + _interpolated_pos_embed(
        visual.positional_embedding, gh, gw
    ).to(x.dtype)
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    layers = list(out_layers) if out_layers else [len(blocks)]
    last = max(layers)
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    taken: Dict[int, torch.Tensor] = {}
    for i, block in enumerate(blocks, start=1):
        x = value_path_block(block, x) if last_block == "vv" and i == len(blocks) else block(x)
        if i in layers:
            taken[i] = (x if batch_first else x.transpose(0, 1))[:, 1:]
        if i == last:  # later blocks would be wasted compute
            break
    # in the order asked for (a layer may feed several outputs)
    return [taken[i] for i in layers]


def _interpolated_pos_embed(pos: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """CLIP's [1 + g*g, width] position embedding resized (bicubic) to a gh x gw grid."""
    cls_pos, grid_pos = pos[:1], pos[1:]
    g = int(round(grid_pos.shape[0] ** 0.5))
    if (gh, gw) != (g, g):
        grid_pos = grid_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode="bicubic", align_corners=False)
        grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(gh * gw, -1)
    return torch.cat([cls_pos, grid_pos], dim=0).unsqueeze(0)


def check_value_path_block(block: nn.Module) -> None:
    """The "vv" path needs open_clip's standard block (nn.MultiheadAttention, packed q/k/v)."""
    attn = getattr(block, "attn", None)
    ok = (
        isinstance(attn, nn.MultiheadAttention)
        and attn.in_proj_weight is not None
        and attn.bias_v is None
        and all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp"))
        and not hasattr(block, "ln_1_kv")
    )
    if not ok:
        raise ValueError(
            f"MODEL.CLIP.DENSE_MODE='vv' needs open_clip's ResidualAttentionBlock with "
            f"nn.MultiheadAttention in the image tower; the last block is {type(block).__name__}"
        )


def value_path_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLIP's last image block as the official OV2VSS code runs it for dense features.

    ``forward_dense`` of mmseg/models/decode_heads/third_party/model_vpt.py: q, k, v =
    in_proj(ln_1(x)); out_proj is applied to v alone (q, k are discarded: no attention is
    formed, each token keeps its own value), then the residual and the FFN as in the block:
    ``y = x + out_proj(v)``, ``y + mlp(ln_2(y))``. open_clip's LayerScale (``ls_1``/``ls_2``,
    identity for CLIP's own weights) is kept where the ordinary block has it. Token-wise, so
    [B, L, D] and [L, B, D] inputs both work.
    """
    attn = block.attn
    dim = x.shape[-1]
    bias = attn.in_proj_bias[2 * dim :] if attn.in_proj_bias is not None else None
    v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * dim :], bias)
    x = x + _layer_scale(block, "ls_1", attn.out_proj(v))
    return x + _layer_scale(block, "ls_2", block.mlp(block.ln_2(x)))


def _layer_scale(block: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    scale = getattr(block, name, None)
    return x if scale is None else scale(x)
