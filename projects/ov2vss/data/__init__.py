"""Data: reading frames and masks, windows of frames, augmentation, the video mapper.

Importing it registers the datasets (``vspw_*``, ``cityscapes_video_*``, ``vspw_toy_*``).
"""

from . import datasets  # noqa: F401  (registers datasets)
from .augmentation import WindowColorAugmentation, WindowColorTransform, build_augmentation
from .frame_sampling import (
    farthest_frame,
    inference_random_frames,
    select_random_frame,
    window_indices,
)
from .io import FrameSizeError, check_same_size, read_frame, read_mask, relabel
from .video_mapper import VideoSemSegDatasetMapper

__all__ = [
    "VideoSemSegDatasetMapper",
    "build_augmentation",
    "WindowColorAugmentation",
    "WindowColorTransform",
    "window_indices",
    "farthest_frame",
    "select_random_frame",
    "inference_random_frames",
    "read_frame",
    "read_mask",
    "relabel",
    "check_same_size",
    "FrameSizeError",
]
