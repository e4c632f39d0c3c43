"""Decoder logits -> class probabilities, and calibrated stacking of the seen classes.

:func:`class_probabilities` is the end of the OV2VSS forward at inference: logits at the decoder
stride are upsampled to the padded frame, cropped to the unpadded frame and resized to the
output size (what detectron2's ``sem_seg_postprocess`` does, here on the logits), calibrated
(:func:`calibrated_stacking`: Chao et al. 2016, ``MODEL.OV2VSS.SEEN_BIAS``, docs/METRICS.md)
and only then turned into probabilities over the active vocabulary (softmax). Resizing comes
first so that the calibration is exact at any output size: lowering the seen classes' scores
does not commute with resizing probabilities, but it does with resizing logits, so the
evaluator's seen-bias sweep on the probabilities predicts a calibrated run exactly.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

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
    (``seen``: one flag per class of the active vocabulary) is the same. Unchanged when gamma
    is 0 or no class is seen.
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


def _output_logits(
    logits: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    seen: Optional[Sequence[bool]],
    gamma: float,
) -> torch.Tensor:
    """Logits [1, n, h, w] of one frame -> calibrated logits [1, n, H, W] at the output size:
    upsampled to the padded size, cropped to the unpadded one, resized (as
    ``sem_seg_postprocess``), then calibrated."""
    full = upsample(logits, padded_size)[:, :, : image_size[0], : image_size[1]]
    if tuple(full.shape[-2:]) != tuple(output_size):
        full = upsample(full, output_size)
    return calibrated_stacking(full, seen, gamma) if seen is not None else full


def class_probabilities(
    logits: torch.Tensor,
    padded_size: Tuple[int, int],
    image_sizes: Sequence[Tuple[int, int]],
    output_sizes: Sequence[Tuple[int, int]],
    class_chunk: int,
    seen: Optional[Sequence[bool]] = None,
    gamma: float = 0.0,
) -> List[Dict[str, torch.Tensor]]:
    """Decoder logits [B, N, h, w] -> ``[{"sem_seg": [N, H, W]}]``: logits upsampled to the
    padded size, cropped to each unpadded size, resized to the output size, calibrated
    (gamma subtracted from the classes flagged in ``seen``; none without it), then the softmax.

    Vocabularies larger than ``class_chunk`` go through in chunks of classes (two passes: the
    softmax normaliser, then the probabilities), so the peak is the [N, H, W] output itself.
    """
    if seen is not None and len(seen) != logits.shape[1]:
        raise ValueError(f"logits have {logits.shape[1]} classes but {len(seen)} seen flags")
    results = []
    for lg, size, out_size in zip(logits, image_sizes, output_sizes):
        lg = lg.unsqueeze(0)
        if lg.shape[1] <= class_chunk:
            full = _output_logits(lg, padded_size, size, out_size, seen, gamma)
            results.append({"sem_seg": full.softmax(dim=1)[0]})
            continue
        bounds = [
            (s, min(s + class_chunk, lg.shape[1])) for s in range(0, lg.shape[1], class_chunk)
        ]

        def chunk(start: int, stop: int) -> torch.Tensor:
            flags = seen[start:stop] if seen is not None else None
            return _output_logits(lg[:, start:stop], padded_size, size, out_size, flags, gamma)

        lse = torch.logsumexp(
            torch.stack([chunk(a, b).logsumexp(dim=1) for a, b in bounds]), dim=0
        )  # [1, H, W]
        out = torch.empty((lg.shape[1], *out_size), dtype=lg.dtype, device=lg.device)
        for a, b in bounds:
            out[a:b] = (chunk(a, b) - lse.unsqueeze(1)).exp_()[0]
        results.append({"sem_seg": out})
    return results
