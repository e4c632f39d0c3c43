"""Drawing predictions: label colours blended over a frame, and a legend of the classes shown."""

from __future__ import annotations

from typing import List, Sequence

import cv2
import numpy as np
from detectron2.utils.colormap import colormap

__all__ = ["class_colors", "blend_labels", "legend_classes", "draw_legend", "draw_overlay"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colors(num_classes: int) -> np.ndarray:
    """[N, 3] uint8 RGB colours, one per class: detectron2's palette, then seeded random ones."""
    base = colormap(rgb=True, maximum=255).astype(np.uint8)
    if num_classes <= len(base):
        return base[:num_classes]
    extra = np.random.default_rng(0).integers(0, 256, (num_classes - len(base), 3), dtype=np.uint8)
    return np.concatenate([base, extra])


def blend_labels(
    frame: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """``(1 - alpha) * frame + alpha * colors[labels]``, as uint8.

    Args:
        frame: RGB uint8 HxWx3.
        labels: HxW class ids (indices into ``colors``).
        colors: [N, 3] uint8 RGB (:func:`class_colors`).
        alpha: opacity of the label colours.
    """
    blended = frame.astype(np.float32) * (1 - alpha) + colors[labels].astype(np.float32) * alpha
    return blended.astype(np.uint8)


def legend_classes(labels: np.ndarray, num_classes: int) -> List[int]:
    """The classes present in ``labels``, largest area first (ties: lower id first)."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)
    return [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]


def draw_legend(
    image: np.ndarray, labels: np.ndarray, names: Sequence[str], colors: np.ndarray
) -> np.ndarray:
    """Draw, in place in the top-left corner of ``image``, a legend of the classes present in
    ``labels`` (largest first): a colour swatch and the name per row, on a darkened panel.
    Rows that do not fit are summarised as "+K more". Returns ``image``."""
    present = legend_classes(labels, len(names))
    h, w = image.shape[:2]
    scale = max(0.3, min(1.0, h / 600))
    thickness = 1 if scale < 0.7 else 2
    (_, text_h), baseline = cv2.getTextSize("Ag", _FONT, scale, thickness)
    row = text_h + baseline + 4
    max_rows = max(1, (h - 4) // row)
    shown = present[:max_rows]
    if len(present) > max_rows:  # keep the legend inside the frame
        shown = present[: max_rows - 1]
    texts = [names[c] for c in shown]
    if len(shown) < len(present):
        texts.append(f"+{len(present) - len(shown)} more")
    width = max(cv2.getTextSize(t, _FONT, scale, thickness)[0][0] for t in texts)
    box_w = min(w, width + row + 8)
    box_h = min(h, row * len(texts) + 4)
    panel = image[:box_h, :box_w].astype(np.float32)
    image[:box_h, :box_w] = (panel * 0.35).astype(np.uint8)  # darken behind the text
    for i, text in enumerate(texts):
        y0 = 2 + i * row
        if i < len(shown):
            color = tuple(int(v) for v in colors[shown[i]])
            cv2.rectangle(image, (4, y0 + 2), (4 + row - 6, y0 + row - 4), color, thickness=-1)
        origin = (row + 2, y0 + text_h + 2)
        cv2.putText(image, text, origin, _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


def draw_overlay(
    frame: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    colors: np.ndarray,
    alpha: float = 0.5,
) -> np.ndarray:
    """A new RGB uint8 image: the label colours blended over ``frame`` (:func:`blend_labels`)
    with a legend of the classes present, largest first (:func:`draw_legend`).

    Args:
        frame: RGB uint8 HxWx3.
        labels: HxW class ids, e.g. ``sem_seg.argmax(0)``.
        names: the class names (the vocabulary), indexed by class id.
        colors: [N, 3] uint8 RGB (:func:`class_colors`).
        alpha: opacity of the label colours.
    """
    return draw_legend(blend_labels(frame, labels, colors, alpha), labels, names, colors)
