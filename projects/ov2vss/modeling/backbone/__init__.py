from .clip_vit import CLIPViTBackbone, build_clip_vit_backbone

__all__ = ["CLIPViTBackbone", "build_clip_vit_backbone"]
