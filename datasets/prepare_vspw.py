#!/usr/bin/env python
"""Check a downloaded VSPW_480p tree and write its label maps (exit status 1 on any problem).

    python datasets/prepare_vspw.py [--root $DETECTRON2_DATASETS/VSPW_480p]
        [--splits train val test] [--workers N] [--force] [--full]
        [--check-only [--masks-per-video K]]

Checks: the split files exist, are non-empty and list each video once; every listed video has
frames (data/<video>/origin/*.jpg), every frame its mask (data/<video>/mask/*.png; VSPW
annotates every frame, so a missing mask is a problem naming the first one, and a video without
masks is reported as unannotated) and every mask its frame; masks are single-channel PNGs of
their frame's size with only values 0..124 and 255; the tree's label_num_dic_final.json (if
present) matches the class list shipped with ov2vss. ``--full`` also decodes every frame and
every mask (a truncated JPEG, a frame of another size, a bad mask value), in ``--workers``
processes, so that such a file is found now rather than in the middle of training or
evaluation.

Writes, for every raw mask, one label map per label space its split is registered with
(train: seen; val/test: unseen, seen, all), in detectron2's convention: values are ids
0..N-1 of the protocol's classes, 255 elsewhere::

    <root>/annotations_detectron2/{seen,unseen,all}/<video>/<frame>.png

A label map newer than its raw mask is skipped, so a second run writes nothing. A mask that
fails a check is reported by name and gets no label map. ``--check-only`` writes nothing and
reads ``--masks-per-video`` masks per video. See datasets/README.md.
"""

import argparse
import os
import sys
from typing import Optional, Sequence

from ov2vss.data.datasets.root import datasets_root
from ov2vss.data.prepare_vspw import prepare_vspw
from ov2vss.data.vspw_classes import VSPW_NUM_SEEN, get_vspw_class_names

# video counts of the official 480p release (paper IV-A)
EXPECTED_VIDEOS = {"train": 2806, "val": 343, "test": 387}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=None, help="default: $DETECTRON2_DATASETS/VSPW_480p")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes writing label maps / decoding files (default: min(8, CPUs))",
    )
    switches = (
        ("--force", "rewrite label maps that are up to date"),
        ("--check-only", "only check the tree, write nothing"),
        ("--no-progress", "no progress bar"),
        ("--full", "decode every frame and every mask (truncated or corrupt files, bad values)"),
    )
    for flag, text in switches:
        parser.add_argument(flag, action="store_true", help=text)
    parser.add_argument(
        "--masks-per-video",
        type=int,
        default=1,
        help="with --check-only: masks read per video for size/value checks (-1: all, 0: none; "
        "--full reads all)",
    )
    args = parser.parse_args(argv)
    root = args.root or os.path.join(datasets_root(), "VSPW_480p")

    report = prepare_vspw(
        root,
        args.splits,
        get_vspw_class_names(),
        VSPW_NUM_SEEN,
        write=not args.check_only,
        masks_per_video=args.masks_per_video,
        workers=max(1, args.workers),
        force=args.force,
        progress=not args.no_progress,
        expected_videos=EXPECTED_VIDEOS,
        full=args.full,
    )
    for line in report.summary:
        print(line)
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    if not args.check_only:
        print(report.counts_line())
    if args.full:
        print(
            f"full check: decoded {report.decoded} frames and their masks; "
            f"{report.bad_frames} bad frame(s), {report.refused} bad mask(s)"
        )
    if report.problems:
        print(f"{len(report.problems)} problem(s) found in {root}")
        return 1
    print(f"{root}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
