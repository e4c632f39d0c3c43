"""Augmentations of a window of frames, built from the config (detectron2 style).

The augmentations are computed once on the target frame and its label; the resulting
transforms are replayed on every other frame of the window, so the frames stay aligned.
Training (paper IV-B): resize the short side (``INPUT.MIN_SIZE_TRAIN``), random crop
(``INPUT.CROP``), horizontal flip and, with ``INPUT.COLOR_AUG_SSD``, one photometric draw
per window. With ``INPUT.COLOR_AUG_PER_FRAME`` the photometric draw is made for every frame of
the window (and the random frame) on its own instead, as the official code does
(docs/OFFICIAL_CODE.md); the video mapper applies it after the geometric transforms
(:func:`build_frame_color_augmentation`). Inference: resize the short side
to ``INPUT.MIN_SIZE_TEST`` (0 disables it, the detectron2 convention); the inference mapper and
the streaming predictor both use it.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T

__all__ = [
    "build_augmentation",
    "build_frame_color_augmentation",
    "WindowColorAugmentation",
    "WindowColorTransform",
]


class WindowColorTransform(T.Transform):
    """Photometric change with fixed parameters, so every frame of a window gets the same one.

    ``out = saturation-blend(contrast-blend(x + brightness))``. The contrast pivot is one
    scalar (the target frame's mean), so the whole transform is the same pixel-wise map for
    every frame: a static pixel keeps the same colour across the window. Labels are untouched.
    """

    def __init__(
        self,
        brightness: float,
        contrast: float,
        contrast_center: float,
        saturation: float,
        gray_weights: Sequence[float],
    ):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float32) + self.brightness
        x = self.contrast * x + (1.0 - self.contrast) * self.contrast_center
        if self.saturation != 1.0 and x.shape[-1] == 3:
            gray = x.dot(np.asarray(self.gray_weights, dtype=np.float32))[..., None]
            x = self.saturation * x + (1.0 - self.saturation) * gray
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class WindowColorAugmentation(T.Augmentation):
    """SSD-style photometric augmentation (random brightness shift, contrast and saturation,
    each applied with probability 1/2), drawn once per window (see
    :class:`WindowColorTransform`).

    detectron2's RandomContrast / RandomSaturation blend with statistics of the image they
    were drawn on (a whole grey image for saturation), which would paste the target frame
    into the reference frames; this augmentation avoids that.
    """

    def __init__(
        self,
        image_format: str = "RGB",
        brightness_delta: float = 32.0,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        prob: float = 0.5,
    ):
        super().__init__()
        weights = (0.299, 0.587, 0.114)  # ITU-R 601 luma, RGB order
        self.gray_weights = weights[::-1] if image_format == "BGR" else weights
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        def draw(lo: float, hi: float, neutral: float) -> float:
            return float(np.random.uniform(lo, hi)) if np.random.rand() < self.prob else neutral

        brightness = draw(-self.brightness_delta, self.brightness_delta, 0.0)
        contrast = draw(*self.contrast_range, 1.0)
        saturation = draw(*self.saturation_range, 1.0)
        center = float(np.clip(image.astype(np.float32) + brightness, 0, 255).mean())
        return WindowColorTransform(brightness, contrast, center, saturation, self.gray_weights)


def build_augmentation(cfg: CfgNode, is_train: bool) -> List[T.Augmentation]:
    """The augmentations of a window (see the module docstring), in the order they are drawn.

    Args:
        cfg: the config (``INPUT.*``).
        is_train: training list, or the inference resize (empty with ``MIN_SIZE_TEST`` 0).
    """
    if not is_train:
        if cfg.INPUT.MIN_SIZE_TEST <= 0:
            return []
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    augs: List[T.Augmentation] = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    augs.append(T.RandomFlip(horizontal=True, vertical=False))
    if cfg.INPUT.COLOR_AUG_SSD and not cfg.INPUT.COLOR_AUG_PER_FRAME:
        augs.append(WindowColorAugmentation(cfg.INPUT.FORMAT))
    return augs


def build_frame_color_augmentation(cfg: CfgNode, is_train: bool) -> Optional[T.Augmentation]:
    """The photometric augmentation drawn once per frame (``INPUT.COLOR_AUG_SSD`` with
    ``INPUT.COLOR_AUG_PER_FRAME``, training only), or None. Each frame's draw is its own
    :class:`WindowColorTransform` (contrast pivot = that frame's mean)."""
    if is_train and cfg.INPUT.COLOR_AUG_SSD and cfg.INPUT.COLOR_AUG_PER_FRAME:
        return WindowColorAugmentation(cfg.INPUT.FORMAT)
    return None
