"""Decoder logits -> class probabilities, and calibrated stacking of the seen classes.

:func:`class_probabilities` is the end of the OV2VSS forward at inference: logits at the decoder
stride are upsampled to the padded frame, turned into probabilities over the active vocabulary
(softmax), cropped to the unpadded frame and resized to the output size.
:func:`calibrated_stacking` (Chao et al. 2016; ``MODEL.OV2VSS.SEEN_BIAS``, see
docs/METRICS.md) lowers the seen classes' scores by gamma before that.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess

from ..vocabulary import vocabulary_key


def check_seen_bias(gamma: object) -> float:
    """gamma of calibrated stacking (MODEL.OV2VSS.SEEN_BIAS) as a float: a finite number >= 0,
    0 = no calibration (the paper's protocols)."""
    try:
        value = float(gamma)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"MODEL.OV2VSS.SEEN_BIAS={gamma!r}: the seen bias must be a finite number >= 0 "
            "(0 = no calibration; see docs/METRICS.md)"
        )
    return value


def seen_class_mask(class_texts: Sequence[str], train_class_texts: Sequence[str]) -> List[bool]:
    """Which classes of ``class_texts`` are in the training vocabulary (names compared as
    CLIP's tokenizer sees them: case and whitespace runs ignored)."""
    train = {vocabulary_key(t) for t in train_class_texts}
    return [vocabulary_key(t) in train for t in class_texts]


def calibrated_stacking(logits: torch.Tensor, seen: Sequence[bool], gamma: float) -> torch.Tensor:
    """Calibrated stacking: ``log p_c - gamma * [c seen]``, renormalised.

    The softmax of :func:`class_probabilities` renormalises, and log p differs from the logits
    by a per-pixel constant, so subtracting gamma from the seen classes' logits [B, N, h, w]
    (``seen``: one flag per class of the active vocabulary) is the same; bilinear upsampling
    commutes with a per-class constant. Unchanged when gamma is 0 or no class is seen.
    """
    if gamma == 0:
        return logits
    if logits.shape[1] != len(seen):
        raise ValueError(
            f"logits have {logits.shape[1]} classes but the vocabulary has {len(seen)}"
        )
    if not any(seen):
        return logits
    bias = torch.tensor(seen, dtype=logits.dtype, device=logits.device) * gamma
    return logits - bias.view(1, -1, 1, 1)


def upsample(logits: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [B, N, h, w] logits to ``size``."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def class_probabilities(
    logits: torch.Tensor,
    padded_size: Tuple[int, int],
    image_sizes: Sequence[Tuple[int, int]],
    output_sizes: Sequence[Tuple[int, int]],
    class_chunk: int,
) -> List[Dict[str, torch.Tensor]]:
    """Decoder logits [B, N, h, w] -> ``[{"sem_seg": [N, H, W]}]``: class probabilities
    upsampled to the padded size, cropped to each unpadded size and resized to the output size.

    Vocabularies larger than ``class_chunk`` go through in chunks of classes (two passes: the
    softmax normaliser, then the probabilities), so the peak is the [N, H, W] output itself.
    """
    results = []
    for lg, size, (h, w) in zip(logits, image_sizes, output_sizes):
        lg = lg.unsqueeze(0)
        if lg.shape[1] <= class_chunk:
            probs = upsample(lg, padded_size).softmax(dim=1)[0]
            results.append({"sem_seg": sem_seg_postprocess(probs, size, h, w)})
            continue
        chunks = lg.split(class_chunk, dim=1)
        lse = torch.logsumexp(
            torch.stack([upsample(c, padded_size).logsumexp(dim=1) for c in chunks]), dim=0
        )  # [1, Hp, Wp]
        out = torch.empty((lg.shape[1], h, w), dtype=lg.dtype, device=lg.device)
        start = 0
        for c in chunks:
            probs = (upsample(c, padded_size) - lse.unsqueeze(1)).exp_()[0]
            out[start : start + c.shape[1]] = sem_seg_postprocess(probs, size, h, w)
            start += c.shape[1]
        results.append({"sem_seg": out})
    return results
