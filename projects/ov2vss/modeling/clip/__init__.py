"""CLIP (open_clip) for OV2VSS, one module per concern: prompt templates (:mod:`.templates`),
loading models (:mod:`.loading`), dense image features F^V (:mod:`.dense`), text encoding
(:mod:`.text`), and the :class:`CLIPAdapter` that ties them together (:mod:`.adapter`)."""

from .adapter import CLIPAdapter, build_clip_adapter
from .dense import (
    DENSE_MODES,
    check_value_path_block,
    patch_grid,
    value_path_block,
    vit_patch_tokens,
)
from .loading import build_open_clip, resolve_arch
from .templates import TEMPLATE_MODES, VILD_TEMPLATES, get_prompt_templates, template_mean
from .text import encode_text

__all__ = [
    "CLIPAdapter",
    "build_clip_adapter",
    "DENSE_MODES",
    "check_value_path_block",
    "patch_grid",
    "value_path_block",
    "vit_patch_tokens",
    "build_open_clip",
    "resolve_arch",
    "TEMPLATE_MODES",
    "VILD_TEMPLATES",
    "get_prompt_templates",
    "template_mean",
    "encode_text",
]
