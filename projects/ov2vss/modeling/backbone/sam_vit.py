"""SAM's ViT-B image encoder as the OV2VSS backbone (the paper's "ViT-B" rows, Tables I and II).

The official OV2VSS ViT-B config initialises its backbone from SAM's ``sam_vit_b_01ec64.pth``
(Kirillov et al., "Segment Anything", image encoder). That encoder is ViTDet's plain ViT
(Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection"): 16x16 patches,
12 blocks of width 768 with 12 heads, 14x14 window attention with decomposed relative position
terms (MViTv2), global attention in blocks 2, 5, 8, 11 (0-based), an absolute position
embedding for a 64x64 patch grid (1024 px). detectron2's :class:`~detectron2.modeling.ViT` is
the same network (SAM's encoder was adapted from it), so it is configured here, not rewritten.
What differs from detectron2's defaults, and is set or adapted below:

* LayerNorm eps 1e-6 (SAM builds its encoder with ``partial(nn.LayerNorm, eps=1e-6)``);
* no class-token slot in the absolute position embedding (``pretrain_use_cls_token=False``;
  SAM stores it as [1, 64, 64, C], see :mod:`.sam_checkpoint` for the conversion);
* activation checkpointing with ``torch.utils.checkpoint`` (detectron2's switch needs fairscale);
* the outputs of several blocks are returned (blocks 3, 6, 9, 12, 1-based), not only the last.

Position embeddings at other input sizes follow detectron2: the absolute one is resized
bicubically to the patch grid (``get_abs_pos``) and the relative tables of the global blocks
linearly to 2*max(h, w)-1 (``get_rel_pos``); window blocks always see 14x14 windows (the token
grid is zero-padded to a multiple of 14 inside each window block, as in SAM and ViTDet).

U^1..U^4 are built from those four blocks in the style of ViTDet's simple feature pyramid:
stride 4 = two 2x2 transposed convs (LayerNorm + GELU between), stride 8 = one transposed conv,
stride 16 = identity, stride 32 = 2x2 max-pool, each followed by a 1x1 and a 3x3 conv with
LayerNorm to ``out_channels``. SAM's own neck (a 256-channel projection of the last block for
its mask decoder) is not used.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, Sequence

import torch
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.utils import get_abs_pos
from detectron2.modeling.backbone.vit import ViT
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["SAMImageEncoder", "SAMViTBackbone", "build_sam_vit_backbone", "SAM_VIT_B"]

# SAM's ViT-B image encoder (segment_anything.build_sam.build_sam_vit_b)
SAM_VIT_B = dict(
    img_size=1024,
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    window_size=14,
    global_blocks=(2, 5, 8, 11),
)


class SAMImageEncoder(ViT):
    """detectron2's ViT configured as SAM's image encoder, returning intermediate blocks.

    Args:
        img_size: the pre-training image size; sets the absolute position grid
            (img_size / patch_size) and the relative position tables of the global blocks.
        patch_size, embed_dim, depth, num_heads: the ViT's size (SAM ViT-B: 16, 768, 12, 12).
        window_size: window of the non-global blocks (SAM: 14).
        global_blocks: 0-based indices of the global-attention blocks (SAM ViT-B: 2, 5, 8, 11).
        out_blocks: 1-based, increasing indices of the blocks whose outputs are returned as
            "block<i>" maps [B, embed_dim, H/patch, W/patch].
        drop_path_rate: stochastic depth (linearly increasing over the blocks, as in ViTDet).
        use_act_checkpoint: recompute each block's activations in the backward pass (training
            only), trading compute for memory.
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        window_size: int = 14,
        global_blocks: Sequence[int] = (2, 5, 8, 11),
        out_blocks: Sequence[int] = (3, 6, 9, 12),
        drop_path_rate: float = 0.0,
        use_act_checkpoint: bool = False,
    ):
        out_blocks = [int(i) for i in out_blocks]
        global_blocks = [int(i) for i in global_blocks]
        if not out_blocks or any(not 1 <= i <= depth for i in out_blocks):
            raise ValueError(
                f"MODEL.SAM_VIT.OUT_BLOCKS {out_blocks}: the ViT has blocks 1..{depth}"
            )
        if any(b <= a for a, b in zip(out_blocks, out_blocks[1:])):
            raise ValueError(f"MODEL.SAM_VIT.OUT_BLOCKS {out_blocks} must be strictly increasing")
        if any(not 0 <= i < depth for i in global_blocks):
            raise ValueError(
                f"MODEL.SAM_VIT.GLOBAL_BLOCKS {global_blocks}: 0-based indices below {depth}"
            )
        if embed_dim % num_heads:
            raise ValueError(f"MODEL.SAM_VIT: EMBED_DIM {embed_dim} is not divisible by NUM_HEADS")
        if img_size % patch_size:
            raise ValueError(f"MODEL.SAM_VIT.PRETRAIN_IMG_SIZE {img_size} is not a multiple of 16")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            drop_path_rate=drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            act_layer=nn.GELU,
            use_abs_pos=True,
            use_rel_pos=True,
            rel_pos_zero_init=True,
            window_size=window_size,
            window_block_indexes=[i for i in range(depth) if i not in global_blocks],
            residual_block_indexes=(),
            use_act_checkpoint=False,  # fairscale's wrapper; torch's checkpoint is used instead
            pretrain_img_size=img_size,
            pretrain_use_cls_token=False,
        )
        self.patch_size = patch_size
        self.use_act_checkpoint = bool(use_act_checkpoint)
        self.out_blocks = out_blocks
        self._out_features = [f"block{i}" for i in out_blocks]
        self._out_feature_channels = {k: embed_dim for k in self._out_features}
        self._out_feature_strides = {k: patch_size for k in self._out_features}
        # blocks after the last returned one never run; freezing them keeps every trainable
        # parameter in the graph (DDP requires it)
        for block in self.blocks[out_blocks[-1] :]:
            block.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.patch_embed(x)  # [B, H/16, W/16, C]
        x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, (x.shape[1], x.shape[2]))
        outs: Dict[str, torch.Tensor] = {}
        recompute = self.use_act_checkpoint and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks[: self.out_blocks[-1]], start=1):
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            if i in self.out_blocks:
                outs[f"block{i}"] = x.permute(0, 3, 1, 2)
        return outs


def _pyramid_stage(dim: int, scale: float, out_channels: int, norm: str) -> nn.Sequential:
    """One level of ViTDet's simple feature pyramid: resample the stride-16 map by ``scale``
    (4, 2, 1 or 1/2), then a 1x1 and a 3x3 conv, each with ``norm``."""
    if scale == 4:
        layers = [
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
            get_norm(norm, dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
        ]
        dim = dim // 4
    elif scale == 2:
        layers = [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)]
        dim = dim // 2
    elif scale == 1:
        layers = []
    elif scale == 0.5:
        layers = [nn.MaxPool2d(kernel_size=2, stride=2)]
    else:
        raise ValueError(f"output stride = patch size / {scale} is not supported (4, 2, 1, 1/2)")
    bias = norm == ""
    layers += [
        Conv2d(dim, out_channels, 1, bias=bias, norm=get_norm(norm, out_channels)),
        Conv2d(
            out_channels, out_channels, 3, padding=1, bias=bias, norm=get_norm(norm, out_channels)
        ),
    ]
    return nn.Sequential(*layers)


class SAMViTBackbone(Backbone):
    """U^1..U^L ("res2".."res5") from the blocks of a :class:`SAMImageEncoder`.

    Args:
        net: the encoder; its returned blocks map, in order, to ``out_strides``.
        out_channels: channels of every output map.
        out_strides: strides of the outputs, each patch_size * 2^k for k in {-2, -1, 0, 1}
            (default 4, 8, 16, 32 for patch 16).
        norm: normalisation of the pyramid convs ("LN" as in ViTDet, "" for none).
    """

    def __init__(
        self,
        net: SAMImageEncoder,
        out_channels: int = 256,
        out_strides: Sequence[int] = (4, 8, 16, 32),
        norm: str = "LN",
    ):
        super().__init__()
        if len(out_strides) != len(net.out_blocks):
            raise ValueError(
                f"MODEL.SAM_VIT.OUT_BLOCKS {net.out_blocks}: expected {len(out_strides)} blocks, "
                f"one per output stride {list(out_strides)}"
            )
        self.net = net
        dim = net.pos_embed.shape[-1]
        self._out_features = [f"res{i + 2}" for i in range(len(out_strides))]
        self._net_features = list(net._out_features)
        self.pyramid = nn.ModuleDict(
            {
                name: _pyramid_stage(dim, net.patch_size / stride, out_channels, norm)
                for name, stride in zip(self._out_features, out_strides)
            }
        )
        self._out_feature_strides = {k: int(s) for k, s in zip(self._out_features, out_strides)}
        self._out_feature_channels = {k: out_channels for k in self._out_features}

    @property
    def size_divisibility(self) -> int:
        # the coarsest map halves the patch grid; window blocks pad internally
        return max(max(self._out_feature_strides.values()), self.net.patch_size)

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self.size_divisibility, "square_size": 0}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: normalised images [B, 3, H, W], H and W multiples of ``size_divisibility``."""
        blocks = self.net(x)
        return {
            name: self.pyramid[name](blocks[src])
            for name, src in zip(self._out_features, self._net_features)
        }

    # output_shape(): detectron2's Backbone builds it from _out_feature_channels/_strides


@BACKBONE_REGISTRY.register()
def build_sam_vit_backbone(cfg, input_shape: ShapeSpec) -> SAMViTBackbone:
    """Backbone name "build_sam_vit_backbone": SAM's image encoder from MODEL.SAM_VIT.*.

    The weights come from MODEL.WEIGHTS (SAM's checkpoint file is converted on loading, see
    :func:`ov2vss.modeling.backbone.sam_checkpoint.convert_sam_checkpoint`).
    """
    c = cfg.MODEL.SAM_VIT
    net = SAMImageEncoder(
        img_size=c.PRETRAIN_IMG_SIZE,
        patch_size=SAM_VIT_B["patch_size"],
        in_chans=input_shape.channels,
        embed_dim=c.EMBED_DIM,
        depth=c.DEPTH,
        num_heads=c.NUM_HEADS,
        window_size=c.WINDOW_SIZE,
        global_blocks=c.GLOBAL_BLOCKS,
        out_blocks=c.OUT_BLOCKS,
        drop_path_rate=c.DROP_PATH_RATE,
        use_act_checkpoint=c.USE_ACT_CHECKPOINT,
    )
    return SAMViTBackbone(net, out_channels=c.OUT_CHANNELS)
