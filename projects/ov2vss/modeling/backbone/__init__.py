"""Backbones giving the per-frame multi-scale features U^1..U^L (paper Fig. 3) that P2T pooling
(Eq. 2), STCF (Eqs. 3-7) and the head (Eq. 13) take: the CLIP ViT-B/16 tower (:mod:`.clip_vit`)
and SAM's ViT-B image encoder (:mod:`.sam_vit`, its checkpoint: :mod:`.sam_checkpoint`); the
ResNets are detectron2's. Importing it registers both with detectron2's BACKBONE_REGISTRY."""

from .clip_vit import CLIPViTBackbone, build_clip_vit_backbone
from .sam_checkpoint import SAMCheckpointError, convert_sam_checkpoint, is_sam_checkpoint
from .sam_vit import SAMImageEncoder, SAMViTBackbone, build_sam_vit_backbone

__all__ = [
    "CLIPViTBackbone",
    "SAMCheckpointError",
    "SAMImageEncoder",
    "SAMViTBackbone",
    "build_clip_vit_backbone",
    "build_sam_vit_backbone",
    "convert_sam_checkpoint",
    "is_sam_checkpoint",
]
