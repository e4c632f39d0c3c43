"""Synthetic data in the VSPW layout, at any frame size, for the GPU check and the benchmarks
(tools/gpu_check.py, benchmarks/bench_loader.py; docs/BENCHMARKS.md).

Each video shows discs of random VSPW classes (raw ids 1..124) moving over a colour gradient;
``root/data/<video>/origin/<t>.jpg`` frames, ``root/data/<video>/mask/<t>.png`` raw masks,
``root/<split>.txt`` video lists and the label maps that ``prepare_vspw`` writes.
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from .prepare_vspw import prepare_vspw
from .vspw_classes import VSPW_NUM_SEEN, get_vspw_class_names

__all__ = ["write_synthetic_vspw"]


def write_synthetic_vspw(
    root: str,
    videos: Dict[str, Tuple[str, int]],
    size: Tuple[int, int],
    noise: float = 0.0,
    seed: int = 0,
) -> None:
    """Write the videos ``{name: (split, number of frames)}`` of ``size`` (H, W) under ``root``.

    ``noise``: standard deviation of Gaussian pixel noise added to the frames, so that their
    JPEG files have the size (and decoding cost) of camera frames rather than of flat colours.
    """
    names = get_vspw_class_names()
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    palette = rng.integers(0, 256, (len(names) + 1, 3), dtype=np.uint8)
    splits: Dict[str, List[str]] = {}
    for video, (split, num_frames) in videos.items():
        splits.setdefault(split, []).append(video)
        ids = rng.choice(np.arange(1, len(names) + 1), size=5, replace=False)
        pos = rng.uniform(0, 1, (5, 2)) * (w, h)
        vel = rng.normal(0, 0.01, (5, 2)) * (w, h)
        radius = rng.uniform(0.1, 0.3, 5) * min(h, w)
        background = np.stack(
            [xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 96)], -1
        )
        for sub in ("origin", "mask"):
            os.makedirs(os.path.join(root, "data", video, sub), exist_ok=True)
        for t in range(num_frames):
            mask = np.zeros((h, w), np.uint8)
            for raw, (cx, cy), r in zip(ids, pos + t * vel, radius):
                mask[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = raw
            image = np.where(mask[..., None] > 0, palette[mask], background).astype(np.uint8)
            if noise > 0:
                grain = rng.normal(0.0, noise, image.shape)
                image = np.clip(image + grain, 0, 255).astype(np.uint8)
            stem = os.path.join(root, "data", video, "{}", f"{t:05d}")
            Image.fromarray(image).save(stem.format("origin") + ".jpg", quality=90)
            Image.fromarray(mask).save(stem.format("mask") + ".png")
    for split, members in splits.items():
        with open(os.path.join(root, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(members) + "\n")
    report = prepare_vspw(root, sorted(splits), names, VSPW_NUM_SEEN)
    if report.problems:
        raise RuntimeError(f"synthetic VSPW data under {root}: " + "; ".join(report.problems[:3]))
