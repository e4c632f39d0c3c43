"""Reading video frames and label masks with errors that name the offending file.

Shared by the video mapper, the evaluator, the streaming predictor and the demo: every
failure (missing file, corrupt image, wrong mask layout, label values a dataset does not
allow, a frame of another size) raises an exception whose message names the file or frame,
so a bad file in a 3000-video dataset can be found without a debugger.
"""

import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from detectron2.data import detection_utils as utils
from PIL import Image

__all__ = [
    "read_frame",
    "read_mask",
    "relabel",
    "check_label_range",
    "check_same_size",
    "FrameSizeError",
]


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")


def read_frame(path: str, fmt: str = "RGB") -> np.ndarray:
    """Read one video frame as a uint8 HxWxC array in ``fmt`` (detectron2's
    ``read_image`` formats: "RGB", "BGR", "L", ...).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file exists but cannot be decoded (corrupt/truncated image).
    """
    _require_file(path, "frame")
    try:
        if fmt not in ("RGB", "BGR"):
            return np.ascontiguousarray(utils.read_image(path, format=fmt))
        # detectron2's read_image without its copy of an image already in RGB (convert)
        with Image.open(path) as image:
            image = utils._apply_exif_orientation(image)
            image = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:  # PIL reports corrupt data with these
        raise ValueError(f"cannot read frame {path}: {e}") from e
    return np.ascontiguousarray(image if fmt == "RGB" else image[:, :, ::-1])


def read_mask(path: str) -> np.ndarray:
    """Read a label mask (single-channel PNG, values 0..255) as a uint8 HxW array.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded, has several channels or values > 255.
    """
    _require_file(path, "mask")
    try:
        with Image.open(path) as img:
            # "P" (palette) masks hold class ids as palette indices: keep the indices.
            mask = np.asarray(img)
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read mask {path}: {e}") from e
    if mask.ndim != 2:
        raise ValueError(
            f"mask {path} must be a single-channel image (HxW), got shape {mask.shape}"
        )
    if mask.dtype != np.uint8:
        # 16/32-bit PNGs are accepted as long as the values fit into the 0..255 label space.
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(
                f"mask {path} has values outside 0..255 (min {mask.min()}, max {mask.max()})"
            )
        mask = mask.astype(np.uint8)
    return mask


def relabel(
    mask: np.ndarray,
    lut: Optional[Sequence[int]],
    path: str,
    num_classes: Optional[int] = None,
    ignore_label: int = 255,
) -> np.ndarray:
    """Map raw mask values to label ids through a 256-entry look-up table.

    Args:
        mask: uint8 HxW raw mask.
        lut: ``lut[raw] = label id`` in ``[0, num_classes)`` or ``ignore_label``; -1 marks raw
            values the dataset does not allow. ``None`` keeps the raw values.
        path: the mask file, named in error messages.
        num_classes: when given, every resulting label must be in ``[0, num_classes)`` or
            equal ``ignore_label``.
        ignore_label: the ignored label id.

    Returns:
        int64 HxW array of label ids.

    Raises:
        ValueError: naming ``path`` and the offending values.
    """
    mask = np.asarray(mask)
    if lut is None:
        labels = mask.astype(np.int64)
    else:
        lut_arr = np.asarray(lut, dtype=np.int64)
        if lut_arr.shape != (256,):
            raise ValueError(f"label_lut must have 256 entries, got shape {lut_arr.shape}")
        labels = lut_arr[mask]
        bad = labels < 0
        if bad.any():
            raw = np.unique(mask[bad]).tolist()
            raise ValueError(f"mask {path} contains raw values not allowed in this dataset: {raw}")
    if num_classes is not None:
        check_label_range(labels, path, num_classes, ignore_label)
    return labels


def check_label_range(labels: np.ndarray, path: str, num_classes: int, ignore_label: int) -> None:
    """Every label of ``labels`` (any integer dtype) is in ``[0, num_classes)`` or
    ``ignore_label``; else ValueError naming ``path`` and the offending values."""
    bad = (labels >= num_classes) & (labels != ignore_label)
    if bad.any():
        raise ValueError(
            f"mask {path} has label values outside the class range [0, {num_classes}) "
            f"(ignore {ignore_label}): {np.unique(labels[bad]).tolist()}"
        )


class FrameSizeError(ValueError):
    """A frame (or mask) whose size differs from the frame it must match."""


def _height_width(array_or_shape: Union[np.ndarray, Sequence[int]]) -> Tuple[int, int]:
    shape = array_or_shape.shape if isinstance(array_or_shape, np.ndarray) else array_or_shape
    return int(shape[0]), int(shape[1])


def check_same_size(
    array: Union[np.ndarray, Sequence[int]],
    name: str,
    ref_shape: Union[np.ndarray, Sequence[int]],
    ref_name: str,
    what: str = "frame",
) -> None:
    """Check that two frames (or a mask and its frame) have the same height and width.

    Args:
        array: the frame/mask to check, or its shape (H, W, ...).
        name: how the message names it: a path, or "3 of video.mp4" (after ``what``).
        ref_shape: the reference frame, or its shape (H, W, ...).
        ref_name: how the message names the reference: a path, "frame 0", ...
        what: "frame" or "mask"; for frames the message adds that all frames of a video must
            have the same size.

    Raises:
        FrameSizeError: ``"<what> <name> has size WxH (WxH) but <ref_name> has size WxH"``.
    """
    h, w = _height_width(array)
    rh, rw = _height_width(ref_shape)
    if (h, w) != (rh, rw):
        rule = ": all frames of a video must have the same size" if what == "frame" else ""
        raise FrameSizeError(
            f"{what} {name} has size {w}x{h} (WxH) but {ref_name} has size {rw}x{rh}{rule}"
        )
