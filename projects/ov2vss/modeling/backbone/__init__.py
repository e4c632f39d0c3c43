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
