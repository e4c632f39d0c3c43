#!/usr/bin/env python
"""Create Cityscapes ``*_gtFine_labelTrainIds.png`` (19 train ids, 255 = ignore) and check the
snippets.

    python datasets/prepare_cityscapes_video.py [--root $DETECTRON2_DATASETS/cityscapes]
        [--splits val] [--method auto|cityscapesscripts|builtin] [--overwrite] [--check-sequences]

Methods: "cityscapesscripts" rasterises the ``*_gtFine_polygons.json`` files with the official
``json2labelImg(..., "trainIds")`` (as its createTrainIdLabelImgs does); "builtin" maps the
shipped ``*_gtFine_labelIds.png`` through the official id -> trainId table below; "auto" uses
cityscapesscripts when it is installed. ``--check-sequences`` reports annotated frames whose
30-frame snippet is incomplete in ``leftImg8bit_sequence``. See datasets/README.md.
"""

import argparse
import glob
import os
import sys
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from ov2vss.data.datasets.root import datasets_root
from ov2vss.fileio import write_png

# Cityscapes label id -> train id (cityscapesscripts/helpers/labels.py); ids not listed -> 255.
ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
_LABEL_IDS = "_gtFine_labelIds.png"
_POLYGONS = "_gtFine_polygons.json"
_TRAIN_IDS = "_gtFine_labelTrainIds.png"


def id_to_train_id_lut() -> np.ndarray:
    """256-entry uint8 table label id -> train id (255 for every class that is not evaluated)."""
    lut = np.full(256, 255, np.uint8)
    for label_id, train_id in ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def convert_label_ids(src: str, dst: str) -> None:
    """Write ``dst`` (train ids) from a ``*_gtFine_labelIds.png`` file."""
    try:
        ids = np.asarray(Image.open(src))
    except OSError as e:
        raise OSError(f"cannot read {src}: {e}") from e
    if ids.ndim != 2:
        raise ValueError(f"{src}: expected a single-channel label image, got shape {ids.shape}")
    write_png(dst, id_to_train_id_lut()[ids])  # never a half-written file


def _has_cityscapesscripts() -> bool:
    try:
        from cityscapesscripts.preparation.json2labelImg import json2labelImg  # noqa: F401
    except ImportError:
        return False
    return True


def create_train_id_labels(
    root: str, split: str, method: str = "auto", overwrite: bool = False
) -> int:
    """Create the missing ``*_gtFine_labelTrainIds.png`` of ``split``; returns how many were
    written."""
    gt_root = os.path.join(root, "gtFine", split)
    if not os.path.isdir(gt_root):
        raise FileNotFoundError(
            f"{gt_root} does not exist (download gtFine_trainvaltest.zip, see datasets/README.md)"
        )
    if method == "auto":
        method = "cityscapesscripts" if _has_cityscapesscripts() else "builtin"
    suffix = _POLYGONS if method == "cityscapesscripts" else _LABEL_IDS
    if method == "cityscapesscripts":
        from cityscapesscripts.preparation.json2labelImg import json2labelImg
    elif method != "builtin":
        raise ValueError(f"unknown method {method!r}; expected auto, cityscapesscripts or builtin")
    sources = sorted(glob.glob(os.path.join(gt_root, "*", "*" + suffix)))
    if not sources:
        raise FileNotFoundError(f"no *{suffix} file under {gt_root}")
    written = 0
    for src in sources:
        dst = src[: -len(suffix)] + _TRAIN_IDS
        if os.path.exists(dst) and not overwrite:
            continue
        if method == "cityscapesscripts":
            json2labelImg(src, dst, "trainIds")
        else:
            convert_label_ids(src, dst)
        written += 1
    return written


def check_sequences(root: str, split: str) -> List[str]:
    """Missing snippet frames of every annotated frame of ``split`` (one line per snippet)."""
    from ov2vss.data.datasets.register_cityscapes_video import load_cityscapes_video

    problems = []
    for record in load_cityscapes_video(root, split):
        missing = [p for p in record["video_frames"] if not os.path.isfile(p)]
        if missing:
            problems.append(
                f"{record['sem_seg_file_name']}: {len(missing)} of "
                f"{len(record['video_frames'])} snippet frames missing, e.g. {missing[0]}"
            )
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=None, help="default: $DETECTRON2_DATASETS/cityscapes")
    parser.add_argument("--splits", nargs="+", default=["val"])
    parser.add_argument(
        "--method", default="auto", choices=["auto", "cityscapesscripts", "builtin"]
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="rewrite existing *_labelTrainIds.png"
    )
    parser.add_argument(
        "--check-sequences", action="store_true", help="report incomplete 30-frame snippets"
    )
    args = parser.parse_args(argv)
    root = args.root or os.path.join(datasets_root(), "cityscapes")
    problems = []
    for split in args.splits:
        n = create_train_id_labels(root, split, args.method, args.overwrite)
        print(f"{split}: wrote {n} *{_TRAIN_IDS} file(s)")
        if args.check_sequences:
            problems += check_sequences(root, split)
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
