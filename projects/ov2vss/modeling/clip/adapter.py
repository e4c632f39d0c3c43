"""The CLIP adapter of OV2VSS: one open_clip model giving both sides of the cost volume.

:class:`CLIPAdapter` encodes a vocabulary into F^T (prompt templates, :mod:`.templates`; text
tower, :mod:`.text`), the input of the video text encoding (paper Eq. 11), and frames into
dense features F^V (:mod:`.dense`), against which the cost volume X = cos(F^T_bar, F^V) is
computed (Eq. 12). :func:`build_clip_adapter` builds it from MODEL.CLIP.* (:mod:`.loading`).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .dense import DENSE_MODES, check_value_path_block, patch_grid, vit_patch_tokens
from .loading import build_open_clip, resolve_arch
from .templates import TEMPLATE_MODES, get_prompt_templates, template_mean
from .text import encode_text

_TEXT_CHUNK = 256  # prompts per text-tower pass in encode_vocabulary

# CLIP's contrastive-loss scalars; OV2VSS scores with its own learnable temperatures
_UNUSED_CLIP_PARAMS = ("logit_scale", "logit_bias")


class CLIPAdapter(nn.Module):
    """Owns the open_clip model; encodes vocabularies (cached) and frames (dense features).

    Args:
        clip_model: an open_clip ``CLIP`` model.
        arch_name: its open_clip model name (selects the tokenizer).
        templates: prompt templates with one "{}" for the class text.
        finetune: "none" (frozen), "attention" (attention layers of both towers), "image"
            (whole image tower, text frozen) or "full".
        input_size: short side of the frames fed to the image tower for dense features.
        dense_mode: how the last image block gives the dense features: "qk" (as in CLIP) or
            "vv" (the official code's value path, see :mod:`.dense`).
        template_mode: "mean" (one text embedding per class) or "channels" (one per class and
            template; see :mod:`.templates`).
    """

    def __init__(
        self,
        clip_model: nn.Module,
        arch_name: str,
        templates: Sequence[str],
        finetune: str = "none",
        input_size: int = 384,
        dense_mode: str = "qk",
        template_mode: str = "mean",
    ):
        super().__init__()
        if dense_mode not in DENSE_MODES:
            raise ValueError(f"MODEL.CLIP.DENSE_MODE={dense_mode!r}: expected one of {DENSE_MODES}")
        if template_mode not in TEMPLATE_MODES:
            raise ValueError(
                f"MODEL.CLIP.TEMPLATE_MODE={template_mode!r}: expected one of {TEMPLATE_MODES}"
            )
        self.template_mode = template_mode
        if dense_mode == "vv":
            check_value_path_block(clip_model.visual.transformer.resblocks[-1])
        self.dense_mode = dense_mode
        self.model = clip_model
        self.arch_name = arch_name
        self._tokenizer = None
        self.templates = list(templates)
        self.input_size = int(input_size)
        self.finetune = finetune
        self._set_trainable(finetune)
        visual = clip_model.visual
        mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        # CLIP normalisation of 0..255 RGB pixels (not saved: it comes with the arch)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, False)
        self._text_cache: Dict[Tuple[Tuple[str, ...], str, str], torch.Tensor] = {}

    # ------------------------------------------------------------------ parameters
    def _set_trainable(self, finetune: str) -> None:
        if finetune not in ("none", "attention", "image", "full"):
            raise ValueError(
                f"MODEL.CLIP.FINETUNE={finetune!r}: expected none|attention|image|full"
            )
        for name, p in self.model.named_parameters():
            if name in _UNUSED_CLIP_PARAMS:
                # never used by OV2VSS: a trainable one would get no gradient (DDP fails on it)
                p.requires_grad_(False)
            elif finetune == "full":
                p.requires_grad_(True)
            elif finetune == "image":
                p.requires_grad_(name.startswith("visual."))
            elif finetune == "attention":
                p.requires_grad_(".attn." in name)
            else:
                p.requires_grad_(False)

    @property
    def text_trainable(self) -> bool:
        return any(
            p.requires_grad for n, p in self.model.named_parameters() if not n.startswith("visual.")
        )

    @property
    def text_channels(self) -> int:
        """Cost-volume channels per class: the number of templates T ("channels"), else 1."""
        return len(self.templates) if self.template_mode == "channels" else 1

    @property
    def embed_dim(self) -> int:
        proj = self.model.text_projection
        return proj.shape[1] if isinstance(proj, torch.Tensor) else proj.out_features

    @property
    def patch_size(self) -> int:
        ps = self.model.visual.patch_size
        return ps[0] if isinstance(ps, (tuple, list)) else int(ps)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.text_trainable:
            self._text_cache.clear()  # a trainable text tower changes its embeddings
        return self

    # ------------------------------------------------------------------ text
    def encode_vocabulary(
        self, class_texts: Sequence[str], template_mode: Optional[str] = None
    ) -> torch.Tensor:
        """F^T: L2-normalised embeddings, [N, D] (mean over the prompt templates, "mean") or
        [N, T, D] (one per template, "channels").

        ``template_mode`` None follows ``MODEL.CLIP.TEMPLATE_MODE`` (:attr:`template_mode`).
        Computed lazily on the model's device and cached per vocabulary while the text tower
        is frozen (or in eval mode).
        """
        if len(class_texts) == 0:
            raise ValueError("the vocabulary is empty: give at least one class name")
        mode = self.template_mode if template_mode is None else template_mode
        if mode not in TEMPLATE_MODES:
            raise ValueError(f"template_mode={mode!r}: expected one of {TEMPLATE_MODES}")
        device = self.pixel_mean.device
        key = (tuple(class_texts), str(device), mode)
        use_cache = not (self.training and self.text_trainable)
        if use_cache and key in self._text_cache:
            return self._text_cache[key]
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.arch_name)
        prompts = [t.format(c) for c in class_texts for t in self.templates]
        tokens = self._tokenizer(prompts).to(device)
        with torch.set_grad_enabled(self.training and self.text_trainable):
            # in chunks: one pass over 124 names x 14 templates would hold ~1 GB of activations
            emb = torch.cat([encode_text(self.model, t) for t in tokens.split(_TEXT_CHUNK)])
        emb = F.normalize(emb.float(), dim=-1).view(len(class_texts), len(self.templates), -1)
        if mode == "mean":
            emb = template_mean(emb)
        if use_cache:
            self._text_cache[key] = emb.detach()
        return emb

    # ------------------------------------------------------------------ image
    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """F^V: dense, projected CLIP image features [B, D, h, w] of 0..255 RGB images [B,3,H,W].

        The frames are resized so that the short side is ``input_size`` (multiple of the patch
        size, :func:`.dense.patch_grid`), the position embedding is interpolated to the patch
        grid, the last block runs as ``dense_mode`` says, and every patch token goes through
        ln_post and the projection, as the class token does in CLIP.
        """
        ps = self.patch_size
        gh, gw = patch_grid(*images.shape[-2:], self.input_size, ps)
        x = F.interpolate(
            images.float(), size=(gh * ps, gw * ps), mode="bilinear", align_corners=False
        )
        x = (x - self.pixel_mean) / self.pixel_std
        visual = self.model.visual
        tokens = vit_patch_tokens(visual, x, last_block=self.dense_mode)[-1]  # [B, gh*gw, width]
        x = visual.ln_post(tokens)
        if visual.proj is not None:
            x = x @ visual.proj
        return x.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)


def build_clip_adapter(cfg) -> CLIPAdapter:
    """Build the CLIP adapter from MODEL.CLIP.* (weights loaded here, text encoded lazily)."""
    model = build_open_clip(cfg.MODEL.CLIP.ARCH, cfg.MODEL.CLIP.PRETRAINED)
    return CLIPAdapter(
        model,
        resolve_arch(cfg.MODEL.CLIP.ARCH),
        get_prompt_templates(cfg.MODEL.CLIP.PROMPT_TEMPLATES),
        finetune=cfg.MODEL.CLIP.FINETUNE,
        input_size=cfg.MODEL.CLIP.INPUT_SIZE,
        dense_mode=cfg.MODEL.CLIP.DENSE_MODE,
        template_mode=cfg.MODEL.CLIP.TEMPLATE_MODE,
    )
