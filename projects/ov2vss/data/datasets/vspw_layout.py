"""Listing a dataset in the VSPW layout (see datasets/README.md)::

    train.txt, val.txt, test.txt       one video name per line
    data/<video>/origin/<frame>.jpg    every frame of the video
    data/<video>/mask/<frame>.png      annotation of every frame; raw values 0..N, 255
    annotations_detectron2/<space>/<video>/<frame>.png
                                       label maps (see ov2vss.data.label_maps)

VSPW annotates every frame, so a video whose mask folder lacks the mask of one of its frames
is an error naming the first missing mask (no record is silently left out of training or
evaluation), and a video without any mask is reported as unannotated: it can be neither
trained on nor evaluated. Folders are listed and one header per video is read; nothing is
decoded (``datasets/prepare_vspw.py --full`` decodes every frame and mask).
"""

import collections
import os
import re
from typing import List, Optional, Tuple

from ...fileio import read_image_size
from ..label_maps import label_map_path
from .common import VideoFrameList

__all__ = ["natural_sort_key", "read_split_file", "load_vspw_video"]

_README = "datasets/README.md"


def natural_sort_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically ("9.jpg" < "10.jpg")."""
    return tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p
    )


def _list_files(directory: str, suffix: str) -> List[str]:
    return sorted(
        (e.name for e in os.scandir(directory) if e.is_file() and e.name.endswith(suffix)),
        key=natural_sort_key,
    )


def read_split_file(root: str, split: str) -> Tuple[str, List[str]]:
    """Path of ``root/{split}.txt`` and the video names it lists (checked: present, non-empty,
    unique)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"dataset root {root} does not exist (see {_README}; the root is read from "
            "$DETECTRON2_DATASETS)"
        )
    split_file = os.path.join(root, f"{split}.txt")
    if not os.path.isfile(split_file):
        raise FileNotFoundError(f"split file {split_file} does not exist (see {_README})")
    with open(split_file, encoding="utf-8") as f:
        videos = [line.strip() for line in f if line.strip()]
    if not videos:
        raise ValueError(f"split file {split_file} lists no video")
    duplicates = sorted(v for v, n in collections.Counter(videos).items() if n > 1)
    if duplicates:
        raise ValueError(f"split file {split_file} lists videos more than once: {duplicates[:5]}")
    return split_file, videos


def load_vspw_video(
    root: str, video: str, listed_in: str = "the split file", label_space: Optional[str] = None
) -> List[dict]:
    """Records of one video (one per frame, in frame order).

    Every frame must have its mask and every mask its frame (module docstring).

    Args:
        root: dataset root.
        video: video name (a directory under ``root/data``).
        listed_in: where the video name came from, quoted in errors.
        label_space: "seen", "unseen" or "all": ``sem_seg_file_name`` is the label map of
            that space (not checked here). None: only the raw masks are listed.
    Returns:
        records ``{"file_name", "raw_sem_seg_file_name", "video_id", "frame_index",
        "video_frames", "height", "width"}`` plus ``sem_seg_file_name`` with a label space.
    """
    frame_dir = os.path.join(root, "data", video, "origin")
    mask_dir = os.path.join(root, "data", video, "mask")
    frames = _list_files(frame_dir, ".jpg") if os.path.isdir(frame_dir) else []
    if not frames:
        raise FileNotFoundError(
            f"video {video!r} listed in {listed_in} has no frames: no .jpg in {frame_dir}"
        )
    masks = _list_files(mask_dir, ".png") if os.path.isdir(mask_dir) else []
    if not masks:
        where = "no .png in" if os.path.isdir(mask_dir) else "no mask folder"
        raise FileNotFoundError(
            f"video {video!r} listed in {listed_in} is unannotated ({where} {mask_dir}): "
            "VSPW annotates every frame, and a video without masks can be neither trained on "
            f"nor evaluated; complete the data or leave the video out of the split (see {_README})"
        )
    video_frames = VideoFrameList(frame_dir, frames)
    index = {os.path.splitext(f)[0]: i for i, f in enumerate(frames)}
    height, width = read_image_size(video_frames[0])  # VSPW frames of one video share a size
    records = []
    for mask in masks:
        stem = os.path.splitext(mask)[0]
        if stem not in index:
            raise FileNotFoundError(
                f"mask {os.path.join(mask_dir, mask)} has no matching frame "
                f"{os.path.join(frame_dir, stem + '.jpg')}"
            )
        i = index[stem]
        record = {"file_name": video_frames[i]}
        if label_space is not None:
            record["sem_seg_file_name"] = label_map_path(root, label_space, video, mask)
        record.update(
            {
                "raw_sem_seg_file_name": os.path.join(mask_dir, mask),
                "video_id": video,
                "frame_index": i,
                "video_frames": video_frames,
                "height": height,
                "width": width,
            }
        )
        records.append(record)
    if len(records) < len(frames):
        annotated = {os.path.splitext(m)[0] for m in masks}
        missing = [f for f in frames if os.path.splitext(f)[0] not in annotated]
        first = os.path.join(mask_dir, os.path.splitext(missing[0])[0] + ".png")
        raise FileNotFoundError(
            f"mask {first} does not exist: {len(missing)} of {len(frames)} frames of video "
            f"{video!r} have no mask, but VSPW annotates every frame (an incomplete download or "
            f"extraction?); no frame is left out silently (see {_README})"
        )
    return records
