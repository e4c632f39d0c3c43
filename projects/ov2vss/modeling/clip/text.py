"""CLIP's text tower over the shortest exact context: the prompt embeddings behind F^T.

The class-text embeddings that :class:`~.adapter.CLIPAdapter` builds from these feed the video
text encoding F^T_bar = F^T + MHSA(F^T, F^V) (paper Eq. 11) and the cost volume (Eq. 12).
:func:`encode_text` gives the same result as ``model.encode_text`` at a fraction of the cost
for short prompts.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn


def encode_text(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)``, run over the shortest context that gives the same result.

    CLIP's text transformer is causal and the pooled token (the EOT token, the largest id, or
    the tokenizer's EOS) sees only the tokens before it, so the context after the last pooled
    position of the batch can be dropped: the position embedding and the causal mask are
    sliced to that length (as open_clip's ``TextTransformer._embeds`` slices them). Towers
    where that is not exact (no causal mask, "first"/"last" pooling, a class token, Hugging
    Face towers, overridden forwards) run over the full context.
    """
    parts = _causal_text_tower(model)
    if parts is None:
        return model.encode_text(tokens)
    pool_type, eos_id = parts["pool_type"], parts["eos_id"]
    if pool_type == "argmax":
        pooled_at = tokens.argmax(dim=-1)
    else:  # "eos"; a row without EOS pools position 0, as text_global_pool does
        pooled_at = (tokens == eos_id).int().argmax(dim=-1)
    length = int(pooled_at.max()) + 1 if tokens.shape[0] else tokens.shape[1]
    if length >= tokens.shape[1]:
        return model.encode_text(tokens)
    from open_clip.transformer import text_global_pool

    tokens = tokens[:, :length]
    transformer = parts["transformer"]
    cast_dtype = transformer.get_cast_dtype()
    x = parts["token_embedding"](tokens).to(cast_dtype)
    x = x + parts["positional_embedding"][:length].to(cast_dtype)
    x = transformer(x, attn_mask=parts["attn_mask"][:length, :length])
    x = parts["ln_final"](x)
    x = text_global_pool(x, tokens, pool_type, eos_token_id=eos_id)
    proj = parts["text_projection"]
    if isinstance(proj, nn.Linear):
        x = proj(x)
    elif proj is not None:
        x = x @ proj
    return x


def _causal_text_tower(model: nn.Module) -> Optional[Dict[str, object]]:
    """The pieces of an open_clip ``CLIP`` / ``CustomTextCLIP`` text tower whose output can be
    computed over a truncated context, or None."""
    try:
        from open_clip.model import CLIP, CustomTextCLIP
        from open_clip.transformer import TextTransformer
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return None
    if "encode_text" in vars(model):  # replaced on the instance (a wrapper): call it as it is
        return None
    if type(model).encode_text is CLIP.encode_text and isinstance(model, CLIP):
        tower, pool_type, eos_id = model, model.text_pool_type, getattr(model, "text_eos_id", None)
    elif (
        type(model).encode_text is CustomTextCLIP.encode_text
        and isinstance(model, CustomTextCLIP)
        and type(model.text) is TextTransformer
        and model.text.cls_emb is None
        and not model.text.use_pad_mask
        and not model.text.output_tokens
    ):
        tower, pool_type, eos_id = model.text, model.text.pool_type, model.text.eos_id
    else:
        return None
    mask = getattr(tower, "attn_mask", None)
    if pool_type not in ("argmax", "eos") or not _is_causal_mask(mask):
        return None
    return dict(
        token_embedding=tower.token_embedding,
        positional_embedding=tower.positional_embedding,
        transformer=tower.transformer,
        attn_mask=mask,
        ln_final=tower.ln_final,
        text_projection=tower.text_projection,
        pool_type=pool_type,
        eos_id=eos_id,
    )


def _is_causal_mask(mask: Optional[torch.Tensor]) -> bool:
    """An additive [n, n] mask: -inf strictly above the diagonal, 0 elsewhere."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    if not mask.is_floating_point():
        return False
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.isneginf(mask[upper]).all() and (mask[~upper] == 0).all())
