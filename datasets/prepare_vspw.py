#!/usr/bin/env python
"""Check a downloaded VSPW_480p tree and report every problem found (exit status 1 if any).

    python datasets/prepare_vspw.py [--root $DETECTRON2_DATASETS/VSPW_480p] [--splits train val test]
                                    [--masks-per-video 1]

Checks: the split files exist, are non-empty and list each video once; every listed video has
frames (data/<video>/origin/*.jpg) and masks (data/<video>/mask/*.png) and every mask has its
frame; a sample of masks per video has the frame's size and only values 0..124 and 255; the
tree's label_num_dic_final.json (if present) matches the class list shipped with ov2vss.
Nothing is written: VSPW needs no conversion (relabelling happens on the fly). See
datasets/README.md.
"""

import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ov2vss.data.datasets.register_vspw import load_vspw_video, read_split_file
from ov2vss.data.vspw_classes import VSPW_NUM_CLASSES, get_vspw_class_names, parse_label_num_dic

# video counts of the official 480p release (paper IV-A)
EXPECTED_VIDEOS = {"train": 2806, "val": 343, "test": 387}
ALLOWED_VALUES = set(range(VSPW_NUM_CLASSES + 1)) | {255}


def _check_masks(records: List[dict], masks_per_video: int) -> List[str]:
    """Size and value checks of ``masks_per_video`` masks spread over the video (-1: all)."""
    if masks_per_video == 0:
        return []
    picks = (
        records
        if masks_per_video < 0
        else [
            records[i]
            for i in np.linspace(0, len(records) - 1, min(masks_per_video, len(records)))
            .round()
            .astype(int)
        ]
    )
    problems = []
    for r in picks:
        try:
            mask = np.asarray(Image.open(r["sem_seg_file_name"]))
        except OSError as e:
            problems.append(f"{r['sem_seg_file_name']}: unreadable ({e})")
            continue
        if mask.ndim != 2:
            problems.append(
                f"{r['sem_seg_file_name']}: expected a single-channel mask, got shape {mask.shape}"
            )
            continue
        if mask.shape != (r["height"], r["width"]):
            problems.append(
                f"{r['sem_seg_file_name']}: size {mask.shape} differs from the frames' {(r['height'], r['width'])}"
            )
        bad = sorted(set(np.unique(mask).tolist()) - ALLOWED_VALUES)
        if bad:
            problems.append(
                f"{r['sem_seg_file_name']}: values {bad[:10]} outside 0..{VSPW_NUM_CLASSES} and 255"
            )
    return problems


def check_vspw(
    root: str, splits: Sequence[str], masks_per_video: int = 1
) -> Tuple[List[str], List[str]]:
    """Check the tree; returns (problems, summary lines)."""
    problems, summary = [], []
    label_file = os.path.join(root, "label_num_dic_final.json")
    if os.path.isfile(label_file):
        try:
            if parse_label_num_dic(label_file) != get_vspw_class_names():
                problems.append(
                    f"{label_file}: class names differ from the list shipped with ov2vss"
                )
        except ValueError as e:
            problems.append(str(e))
    for split in splits:
        try:
            split_file, videos = read_split_file(root, split)
        except (OSError, ValueError) as e:
            problems.append(str(e))
            continue
        if split in EXPECTED_VIDEOS and len(videos) != EXPECTED_VIDEOS[split]:
            summary.append(
                f"note: {split_file} lists {len(videos)} videos; the 480p release has {EXPECTED_VIDEOS[split]}"
            )
        num_records = num_frames = 0
        for video in videos:
            try:
                records = load_vspw_video(root, video, split_file)
            except (OSError, ValueError) as e:
                problems.append(str(e))
                continue
            num_records += len(records)
            num_frames += len(records[0]["video_frames"])
            problems.extend(_check_masks(records, masks_per_video))
        summary.append(
            f"{split}: {len(videos)} videos, {num_frames} frames, {num_records} annotated frames"
        )
    return problems, summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "VSPW_480p")
    )
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument(
        "--masks-per-video",
        type=int,
        default=1,
        help="masks read per video for size/value checks (-1: all, 0: none)",
    )
    args = parser.parse_args(argv)
    problems, summary = check_vspw(args.root, args.splits, args.masks_per_video)
    for line in summary:
        print(line)
    for p in problems:
        print(f"PROBLEM: {p}")
    print(f"{len(problems)} problem(s) found in {args.root}" if problems else f"{args.root}: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
