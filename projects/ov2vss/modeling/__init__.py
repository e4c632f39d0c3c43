"""OV2VSS building blocks, one module per paper component."""

from .backbone import (
    CLIPViTBackbone,
    SAMViTBackbone,
    build_clip_vit_backbone,
    build_sam_vit_backbone,
)
from .clip import CLIPAdapter, build_clip_adapter
from .head import OpenVocabularyHead, TextAlignedAuxHead
from .p2t_pooling import P2TPooling
from .rfe import RandomFrameEnhancement
from .stcf import SpatialTemporalContextFusion
from .video_text_encoding import VideoTextEncoder, cosine_cost_volume

__all__ = [
    "CLIPViTBackbone",
    "build_clip_vit_backbone",
    "SAMViTBackbone",
    "build_sam_vit_backbone",
    "CLIPAdapter",
    "build_clip_adapter",
    "OpenVocabularyHead",
    "TextAlignedAuxHead",
    "P2TPooling",
    "RandomFrameEnhancement",
    "SpatialTemporalContextFusion",
    "VideoTextEncoder",
    "cosine_cost_volume",
]
