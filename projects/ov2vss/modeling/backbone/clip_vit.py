"""ViT-B/16 backbone taken from a CLIP visual tower (open_clip), for the ViT config.

Intermediate blocks (MODEL.CLIP_VIT.OUT_LAYERS) give the multi-scale maps U^1..U^L: each block's
patch tokens (stride = patch size) are projected to OUT_CHANNELS and resized to OUT_STRIDES,
a plain "simple feature pyramid" so that STCF sees the same kind of pyramid as with a ResNet.
"""

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from ..clip.dense import vit_patch_tokens
from ..clip.loading import build_open_clip


class CLIPViTBackbone(Backbone):
    """U^1..U^L from the blocks ``out_layers`` (1-based) of an open_clip visual tower, each
    projected to ``out_channels`` and resized to its stride of ``out_strides``."""

    def __init__(
        self,
        visual: nn.Module,
        out_layers: Sequence[int],
        out_strides: Sequence[int],
        out_channels: int,
    ):
        super().__init__()
        if len(out_layers) != len(out_strides):
            raise ValueError(
                f"MODEL.CLIP_VIT: OUT_LAYERS {out_layers} and OUT_STRIDES {out_strides} differ in "
                "length"
            )
        num_blocks = len(visual.transformer.resblocks)
        if any(not 1 <= i <= num_blocks for i in out_layers):
            raise ValueError(
                f"MODEL.CLIP_VIT.OUT_LAYERS {out_layers}: the tower has blocks 1..{num_blocks}"
            )
        self.visual = visual
        self.out_layers = list(out_layers)
        # the pooled-embedding head and the blocks after the last output layer never run here;
        # freezing them keeps every trainable parameter in the graph (DDP requires it)
        unused = [visual.ln_post] + list(visual.transformer.resblocks[max(out_layers) :])
        for module in unused:
            module.requires_grad_(False)
        if isinstance(visual.proj, nn.Parameter):
            visual.proj.requires_grad_(False)
        ps = visual.patch_size
        self.patch = ps[0] if isinstance(ps, (tuple, list)) else int(ps)
        width = visual.conv1.out_channels
        self.necks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, out_channels, 1),
                nn.GELU(),
                nn.Conv2d(out_channels, out_channels, 3, padding=1),
            )
            for _ in out_layers
        )
        self._out_features = [f"res{i + 2}" for i in range(len(out_layers))]
        self._out_feature_strides = dict(zip(self._out_features, out_strides))
        self._out_feature_channels = {k: out_channels for k in self._out_features}

    @property
    def size_divisibility(self) -> int:
        return max(max(self._out_feature_strides.values()), self.patch)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        gh, gw = h // self.patch, w // self.patch
        tokens = vit_patch_tokens(
            self.visual, x[..., : gh * self.patch, : gw * self.patch], self.out_layers
        )
        outs = {}
        for name, tok, neck in zip(self._out_features, tokens, self.necks):
            grid = tok.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
            stride = self._out_feature_strides[name]
            grid = F.interpolate(
                grid, size=(h // stride, w // stride), mode="bilinear", align_corners=False
            )
            outs[name] = neck(grid)
        return outs

    # output_shape(): detectron2's Backbone builds it from _out_feature_channels/_strides


@BACKBONE_REGISTRY.register()
def build_clip_vit_backbone(cfg, input_shape: ShapeSpec) -> CLIPViTBackbone:
    """Backbone name "build_clip_vit_backbone": the visual tower of MODEL.CLIP.ARCH/PRETRAINED."""
    clip_model = build_open_clip(cfg.MODEL.CLIP.ARCH, cfg.MODEL.CLIP.PRETRAINED)
    return CLIPViTBackbone(
        clip_model.visual,
        cfg.MODEL.CLIP_VIT.OUT_LAYERS,
        cfg.MODEL.CLIP_VIT.OUT_STRIDES,
        cfg.MODEL.CLIP_VIT.OUT_CHANNELS,
    )
