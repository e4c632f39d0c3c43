"""Prompt templates of the class texts, and how their embeddings make F^T (paper Eq. 11).

Every class name is put into each prompt template ("a photo of a {}.") and encoded by CLIP's
text tower (:mod:`.text`). ``MODEL.CLIP.TEMPLATE_MODE`` says what F^T is made of:

* "mean": one embedding per class name, the L2-normalised mean over the prompt templates as in
  ZegFormer/ViLD ([N, D]; :func:`template_mean`);
* "channels": one embedding per (class, template), as the official code does after CAT-Seg
  (mmseg/models/decode_heads/cat_zeroshot_classifier.py lines 215-216 and 275-296: the
  [N, T, D] classifier), so the cost volume (Eq. 12) gets T channels per class.

``MODEL.CLIP.PROMPT_TEMPLATES`` picks the set (:func:`get_prompt_templates`).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

# ViLD's prompt set (Gu et al., "Open-vocabulary object detection via vision and language
# knowledge distillation"), the usual choice of open-vocabulary segmentation projects.
VILD_TEMPLATES: Tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

TEMPLATE_MODES = ("mean", "channels")  # MODEL.CLIP.TEMPLATE_MODE (module docstring)


def get_prompt_templates(spec: Union[str, Sequence[str]]) -> List[str]:
    """Resolve MODEL.CLIP.PROMPT_TEMPLATES: "vild", "imagenet" (CLIP's 80), "single", or a list."""
    if isinstance(spec, str):
        key = spec.lower()
        if key == "vild":
            return list(VILD_TEMPLATES)
        if key == "imagenet":
            from open_clip import OPENAI_IMAGENET_TEMPLATES

            # open_clip stores them as callables; "{}" keeps our str.format convention
            return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
        if key == "single":
            return ["a photo of a {}."]
        raise ValueError(
            f"MODEL.CLIP.PROMPT_TEMPLATES={spec!r}: expected 'vild', 'imagenet', 'single' or a list"
        )
    templates = [str(t) for t in spec]
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"prompt templates must be non-empty and contain '{{}}': {templates}")
    return templates


def template_mean(text: torch.Tensor) -> torch.Tensor:
    """[..., T, D] per-template embeddings -> [..., D]: the L2-normalised mean over templates
    (what "mean" mode gives for L2-normalised template embeddings)."""
    return F.normalize(text.mean(dim=-2), dim=-1)
