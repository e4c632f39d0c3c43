"""Loading SAM's own checkpoint (``sam_vit_b_01ec64.pth``) into the SAM ViT backbone.

SAM's file is the state dict of the whole ``Sam`` model: ``image_encoder.*`` (the ViT, plus
``image_encoder.neck.*``, SAM's projection for its mask decoder), ``prompt_encoder.*`` and
``mask_decoder.*``. The OV2VSS backbone (:mod:`.sam_vit`) holds detectron2's ViT at
``backbone.net``; the tensors map one to one except for

* ``pos_embed``: SAM stores [1, 64, 64, C], detectron2's ViT [1, 64*64, C];
* ``blocks.<i>.mlp.lin1`` / ``lin2`` (SAM's MLPBlock) are ``mlp.fc1`` / ``fc2`` (timm's Mlp).

``neck.*`` is skipped (the OV2VSS backbone builds its own pyramid), and the prompt encoder and
mask decoder are ignored. Loading is strict: every encoder tensor the backbone uses must be in
the file with the right shape, and the file must not hold encoder tensors the backbone lacks,
otherwise :class:`SAMCheckpointError` names them. When the backbone is built for another
pre-training size (MODEL.SAM_VIT.PRETRAIN_IMG_SIZE), the absolute position embedding is resized
bicubically and the relative position tables of the global blocks linearly, the same
interpolations detectron2's ViT applies at run time (``get_abs_pos`` / ``get_rel_pos``).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .sam_vit import SAM_VIT_B

__all__ = [
    "SAMCheckpointError",
    "convert_sam_checkpoint",
    "is_sam_checkpoint",
    "sam_encoder_shapes",
]

logger = logging.getLogger(__name__)

SAM_ENCODER = "image_encoder."
_SAM_SKIPPED = ("neck.",)  # encoder parts the OV2VSS backbone does not use
_VIT_NET = "net."  # where SAMViTBackbone keeps the ViT
_MAX_LISTED = 40  # problems named in the error message


class SAMCheckpointError(ValueError):
    """SAM's checkpoint does not fit the backbone (missing, mis-shaped or unknown tensors)."""


def is_sam_checkpoint(state_dict: Mapping[str, object]) -> bool:
    """True for the state dict of SAM's ``Sam`` model (the official ``sam_vit_*.pth`` files)."""
    if not isinstance(state_dict, Mapping):
        return False
    return (
        f"{SAM_ENCODER}patch_embed.proj.weight" in state_dict
        and f"{SAM_ENCODER}pos_embed" in state_dict
    )


def sam_encoder_shapes(
    img_size: int = SAM_VIT_B["img_size"],
    patch_size: int = SAM_VIT_B["patch_size"],
    embed_dim: int = SAM_VIT_B["embed_dim"],
    depth: int = SAM_VIT_B["depth"],
    num_heads: int = SAM_VIT_B["num_heads"],
    window_size: int = SAM_VIT_B["window_size"],
    global_blocks: Sequence[int] = SAM_VIT_B["global_blocks"],
    in_chans: int = 3,
    mlp_ratio: float = 4.0,
) -> Dict[str, Tuple[int, ...]]:
    """Names (detectron2 ViT, no prefix) and shapes of the tensors of a
    :class:`~.sam_vit.SAMImageEncoder` of this size; the default is SAM's ViT-B at 1024 px."""
    c, g = embed_dim, img_size // patch_size  # width, position grid side
    hd, hidden = embed_dim // num_heads, int(embed_dim * mlp_ratio)  # head width, MLP width
    shapes: Dict[str, Tuple[int, ...]] = {
        "pos_embed": (1, g * g, c),
        "patch_embed.proj.weight": (c, in_chans, patch_size, patch_size),
        "patch_embed.proj.bias": (c,),
    }
    for i in range(depth):
        rel = 2 * (g if i in global_blocks else window_size) - 1
        block = {
            "norm1.weight": (c,),
            "norm1.bias": (c,),
            "attn.qkv.weight": (3 * c, c),
            "attn.qkv.bias": (3 * c,),
            "attn.proj.weight": (c, c),
            "attn.proj.bias": (c,),
            "attn.rel_pos_h": (rel, hd),
            "attn.rel_pos_w": (rel, hd),
            "norm2.weight": (c,),
            "norm2.bias": (c,),
            "mlp.fc1.weight": (hidden, c),
            "mlp.fc1.bias": (hidden,),
            "mlp.fc2.weight": (c, hidden),
            "mlp.fc2.bias": (c,),
        }
        shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    return shapes


def _to_vit_name(sam_name: str) -> str:
    """SAM encoder name (without "image_encoder.") -> detectron2 ViT name."""
    return re.sub(r"\.mlp\.lin([12])\.", r".mlp.fc\1.", sam_name)


def _to_sam_name(vit_name: str) -> str:
    return SAM_ENCODER + re.sub(r"\.mlp\.fc([12])\.", r".mlp.lin\1.", vit_name)


def _resize_abs_pos(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, g, g, C] -> [1, grid*grid, C], bicubic as detectron2's ``get_abs_pos``."""
    if pos.shape[1] != grid or pos.shape[2] != grid:
        resized = F.interpolate(
            pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic", align_corners=False
        )
        pos = resized.to(pos.dtype).permute(0, 2, 3, 1)
    return pos.reshape(1, grid * grid, pos.shape[-1])


def _resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """[L, head_dim] -> [length, head_dim], linear as detectron2's ``get_rel_pos``."""
    resized = F.interpolate(
        table.float().t().unsqueeze(0), size=length, mode="linear", align_corners=False
    )
    return resized[0].t().to(table.dtype).contiguous()


def convert_sam_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    backbone_prefix: str = "backbone.",
    target_shapes: Optional[Mapping[str, Sequence[int]]] = None,
) -> "OrderedDict[str, torch.Tensor]":
    """SAM's state dict -> the backbone's tensors under the OV2VSS model's names.

    Args:
        state_dict: SAM's checkpoint (``image_encoder.*``, ``prompt_encoder.*``,
            ``mask_decoder.*``), as ``torch.load`` returns it.
        backbone_prefix: where the meta-architecture keeps the backbone ("backbone." for
            ``model.backbone``; "" to load into a bare :class:`~.sam_vit.SAMViTBackbone`).
        target_shapes: name -> shape of the model's tensors (e.g. ``{k: v.shape for k, v in
            model.state_dict().items()}``); the names under ``<backbone_prefix>net.`` are the
            ones that must be loaded. Default: SAM's ViT-B at 1024 px (:func:`sam_encoder_shapes`).

    Returns:
        ``<backbone_prefix>net.<name>`` -> tensor for every ViT tensor (position tables resized
        to the target shapes where they differ). Nothing else of the model is in SAM's file.

    Raises:
        SAMCheckpointError: not a SAM checkpoint; an expected tensor is missing or has the wrong
            shape; or the file holds encoder tensors the backbone does not have (another SAM
            size). The message names every such tensor.
    """
    if not is_sam_checkpoint(state_dict):
        raise SAMCheckpointError(
            "not a SAM checkpoint: expected SAM's keys image_encoder.patch_embed.proj.weight and "
            "image_encoder.pos_embed (the official sam_vit_*.pth files)"
        )
    net_prefix = backbone_prefix + _VIT_NET
    if target_shapes is None:
        expected = {net_prefix + k: tuple(v) for k, v in sam_encoder_shapes().items()}
    else:
        expected = {k: tuple(v) for k, v in target_shapes.items() if k.startswith(net_prefix)}
        if not expected:
            raise SAMCheckpointError(
                f"the model has no SAM ViT backbone (no parameters under {net_prefix!r}); SAM's "
                "checkpoint loads into MODEL.BACKBONE.NAME 'build_sam_vit_backbone'"
            )

    converted: Dict[str, torch.Tensor] = OrderedDict()
    skipped, ignored = [], []
    for key, value in state_dict.items():
        if not key.startswith(SAM_ENCODER):
            ignored.append(key)  # prompt encoder, mask decoder
            continue
        name = key[len(SAM_ENCODER) :]
        if name.startswith(_SAM_SKIPPED):
            skipped.append(key)
            continue
        converted[net_prefix + _to_vit_name(name)] = value

    problems = []
    for name, shape in expected.items():
        if name not in converted:
            problems.append(f"missing {_to_sam_name(name[len(net_prefix):])} (for {name})")
            continue
        value = converted[name]
        vit_name = name[len(net_prefix) :]
        if vit_name == "pos_embed" and value.dim() == 4 and len(shape) == 3:
            grid = int(round(shape[1] ** 0.5))
            if grid * grid == shape[1] and value.shape[-1] == shape[2]:
                if value.shape[1:3] != (grid, grid):
                    logger.info(
                        f"SAM checkpoint: pos_embed {list(value.shape)} resized to {grid}x{grid}"
                    )
                value = _resize_abs_pos(value, grid)
        elif vit_name.endswith(("attn.rel_pos_h", "attn.rel_pos_w")) and value.dim() == 2:
            if len(shape) == 2 and value.shape[1] == shape[1] and value.shape[0] != shape[0]:
                logger.info(
                    f"SAM checkpoint: {vit_name} {list(value.shape)} resized to {list(shape)}"
                )
                value = _resize_rel_pos(value, shape[0])
        if tuple(value.shape) != shape:
            problems.append(
                f"wrong shape {_to_sam_name(vit_name)}: {list(value.shape)} in the file, "
                f"{list(shape)} expected (for {name})"
            )
        converted[name] = value
    unexpected = [k for k in converted if k not in expected]
    problems += [
        f"unexpected {_to_sam_name(k[len(net_prefix):])} (the backbone has no {k})"
        for k in unexpected
    ]
    if problems:
        shown = problems[:_MAX_LISTED]
        if len(problems) > len(shown):  # e.g. ViT-L's file for a ViT-B backbone: every tensor
            shown.append(f"... and {len(problems) - len(shown)} more")
        raise SAMCheckpointError(
            f"SAM checkpoint does not fit the backbone (MODEL.SAM_VIT), {len(problems)} "
            "problem(s):\n  " + "\n  ".join(shown)
        )
    if skipped:
        logger.info(
            f"SAM checkpoint: skipped {len(skipped)} tensors of SAM's neck, unused by the OV2VSS "
            f"backbone: {', '.join(skipped)}"
        )
    if ignored:
        logger.info(
            f"SAM checkpoint: ignored {len(ignored)} tensors outside the image encoder "
            "(prompt_encoder.*, mask_decoder.*)"
        )
    return converted
