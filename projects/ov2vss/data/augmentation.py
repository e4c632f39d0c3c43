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

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from PIL import Image

__all__ = [
    "apply_transforms",
    "augment_window",
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


# ------------------------------------------------------------------ applying a window's draw
# The same pixels as detectron2's AugInput + AugmentationList / TransformList.apply_image, with
# less work (docs/BENCHMARKS.md, "Data loader"): the shape-only augmentations are drawn on the
# frame's shape, and an enlarging bilinear resize followed by a crop computes only the crop.
_SHAPE_ONLY = (T.ResizeShortestEdge, T.RandomCrop, T.RandomFlip)


class _ShapeInput:
    """Stands in for ``T.AugInput`` while drawing :data:`_SHAPE_ONLY` augmentations, which read
    only ``image.shape``: follows the shape through their transforms."""

    def __init__(self, shape: Tuple[int, ...]):
        self._zero = np.zeros((), np.uint8)  # no memory per pixel
        self.image = np.broadcast_to(self._zero, shape)

    def transform(self, tfm: T.Transform) -> None:
        h, w = self.image.shape[:2]
        if isinstance(tfm, T.ResizeTransform):
            h, w = tfm.new_h, tfm.new_w
        elif isinstance(tfm, T.CropTransform):  # numpy slicing clips at the border
            h = len(range(h)[tfm.y0 : tfm.y0 + tfm.h])
            w = len(range(w)[tfm.x0 : tfm.x0 + tfm.w])
        elif not isinstance(tfm, (T.HFlipTransform, T.VFlipTransform, T.NoOpTransform)):
            raise TypeError(f"unexpected transform {tfm} of a shape-only augmentation")
        self.image = np.broadcast_to(self._zero, (h, w) + self.image.shape[2:])


def augment_window(
    augmentations: T.AugmentationList, image: np.ndarray, sem_seg: Optional[np.ndarray]
) -> Tuple[T.TransformList, np.ndarray, Optional[np.ndarray]]:
    """Draw the window's augmentation on the target frame (and label) and apply it to both:
    the same random draws, transforms and pixels as ``augmentations(T.AugInput(image,
    sem_seg=sem_seg))``. Returns (transforms, augmented frame, augmented label)."""
    if not all(type(aug) in _SHAPE_ONLY for aug in augmentations.augs):
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = augmentations(aug_input)
        return transforms, aug_input.image, aug_input.sem_seg
    transforms = augmentations(_ShapeInput(image.shape))
    label = None if sem_seg is None else transforms.apply_segmentation(sem_seg)
    return transforms, apply_transforms(transforms, image), label


def apply_transforms(transforms: T.TransformList, image: np.ndarray) -> np.ndarray:
    """``transforms.apply_image(image)``, the same pixels: a resize to the same size is skipped
    (PIL would copy), and an enlarging bilinear resize of an HxWx3 uint8 frame followed by a
    crop computes the crop only (:func:`_resize_crop`)."""
    tfms = list(transforms.transforms)
    i = 0
    while i < len(tfms):
        t, follower = tfms[i], tfms[i + 1] if i + 1 < len(tfms) else None
        frame = image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        if isinstance(t, T.ResizeTransform) and frame and image.shape[:2] == (t.h, t.w):
            if (t.h, t.w) == (t.new_h, t.new_w):
                i += 1
                continue
            if _croppable(t, follower):
                image = _resize_crop(image, t, follower)
                i += 2
                continue
        image = t.apply_image(image)
        i += 1
    return image


def _croppable(resize: T.ResizeTransform, crop: Optional[T.Transform]) -> bool:
    return (
        isinstance(crop, T.CropTransform)
        and resize.interp == Image.BILINEAR
        and resize.new_h > resize.h
        and resize.new_w > resize.w
        and 0 <= crop.x0 < crop.x0 + crop.w <= resize.new_w
        and 0 <= crop.y0 < crop.y0 + crop.h <= resize.new_h
    )


def _resize_crop(image: np.ndarray, resize: T.ResizeTransform, crop: T.CropTransform) -> np.ndarray:
    """PIL's bilinear resize, then the crop, computing only the pixels the crop keeps.

    PIL resizes in two passes through an 8-bit image, rows first (each output row from its
    input row) then columns (each output column from its input column). So: the row pass only
    on the input rows the crop's rows need (an enlargement reads rows within +-1.5 of its
    source position), its columns cropped, and the column pass on those columns (the other
    rows are zeros that no kept output reads). Checked against the whole resize at random
    sizes, scales and crops, and at the paper's VSPW scales (tests/test_benchmarks.py). PIL
    order differs when shrinking, so only enlargements take this path.
    """
    h = resize.h
    scale = h / resize.new_h
    first = max(int(math.floor(crop.y0 * scale)) - 3, 0)
    last = min(int(math.ceil((crop.y0 + crop.h) * scale)) + 3, h)
    rows = Image.fromarray(image[first:last]).resize((resize.new_w, last - first), resize.interp)
    columns = Image.new("RGB", (crop.w, h))
    columns.paste(rows.crop((crop.x0, 0, crop.x0 + crop.w, last - first)), (0, first))
    out = columns.resize((crop.w, resize.new_h), resize.interp)
    return np.asarray(out.crop((0, crop.y0, crop.w, crop.y0 + crop.h)))
