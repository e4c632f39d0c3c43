#!/usr/bin/env python
"""OV2VSS demo: segment a video (or a folder of frames) with any list of class names.

    python demo/demo.py --config-file configs/toy/ov2vss_tiny_cpu.yaml \
        --video-input street.mp4 --vocabulary "road, car, person, bicycle, building, sky" \
        --output out.mp4 [--max-frames 100] [--opts MODEL.WEIGHTS model.pth INPUT.MIN_SIZE_TEST 480]

The output is a video (.mp4/.mkv/.avi/.mov/.webm) or a folder of PNGs with the labels blended
over the frames; the share of pixels of every class is printed and written as JSON. An error is
one ``error:`` line naming the file or value, exit status 2. Inputs, outputs, the JSON fields,
``--seen-bias`` and ``--training-free``: docs/DEMO.md.

This script is the command line only: it turns the arguments into a
:class:`ov2vss.video_segmentation.SegmentationConfig` and runs
:func:`ov2vss.video_segmentation.segment_video`.
"""

from __future__ import annotations

import ov2vss  # noqa: F401  isort: skip  (first: registers everything, quiets import noise)
import argparse
import contextlib
import logging
import sys
from typing import Dict, Optional, Sequence

import tqdm

from ov2vss.video_segmentation import (
    SegmentationConfig,
    SegmentationError,
    pixel_share_table,
    segment_video,
    summary_path,
)


def get_parser() -> argparse.ArgumentParser:
    """The demo's command-line arguments (docs/DEMO.md)."""
    parser = argparse.ArgumentParser(
        description="OV2VSS demo: open-vocabulary video semantic segmentation"
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="path to a config file"
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--video-input", metavar="FILE", help="a video file")
    src.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="a folder of frames, glob patterns or frame files",
    )
    voc = parser.add_mutually_exclusive_group(required=True)
    voc.add_argument(
        "--vocabulary", metavar="NAMES", help='class names, comma separated: "road, car, person"'
    )
    voc.add_argument(
        "--vocabulary-file", metavar="FILE", help="a text file with one class name per line"
    )
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="a video file (.mp4, .mkv, .avi, .mov, .webm) or a folder for PNGs; "
        "without it only the pixel-share summary is printed",
    )
    parser.add_argument("--max-frames", type=int, default=None, help="only the first N frames")
    parser.add_argument(
        "--fps", type=float, default=10.0, help="frame rate of the output video for --input frames"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the label colours")
    parser.add_argument(
        "--seen-bias",
        type=float,
        default=None,
        metavar="G",
        help="calibration: subtract G >= 0 from the log-probabilities of classes in the model's "
        "training vocabulary (MODEL.OV2VSS.SEEN_BIAS; default: the config's, 0)",
    )
    parser.add_argument(
        "--training-free",
        action="store_true",
        help="no OV2VSS weights: label each pixel with CLIP alone (needs real CLIP weights, "
        "MODEL.CLIP.PRETRAINED)",
    )
    parser.add_argument(
        "--temporal-window",
        type=int,
        default=1,
        metavar="K",
        help="with --training-free: average the cost volumes of the last K frames (1 = per frame)",
    )
    parser.add_argument(
        "--allow-random-clip",
        action="store_true",
        help="with --training-free: run even with random CLIP weights (labels are noise; tests)",
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> SegmentationConfig:
    """The options of :func:`get_parser` as a :class:`SegmentationConfig`."""
    return SegmentationConfig(
        config_file=args.config_file,
        video_input=args.video_input,
        inputs=args.input or (),
        vocabulary=args.vocabulary,
        vocabulary_file=args.vocabulary_file,
        output=args.output,
        max_frames=args.max_frames,
        fps=args.fps,
        alpha=args.alpha,
        seen_bias=args.seen_bias,
        training_free=args.training_free,
        temporal_window=args.temporal_window,
        allow_random_clip=args.allow_random_clip,
        opts=args.opts,
    )


class ProgressBar:
    """A tqdm bar on stderr, fed by :func:`segment_video`'s progress callback."""

    def __init__(self) -> None:
        self.bar: Optional[tqdm.tqdm] = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm.tqdm(total=total, unit="frame", desc="OV2VSS")
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_pixel_share(summary: Dict) -> None:
    """The pixel share of every class, after a blank line."""
    print("\n" + pixel_share_table(summary))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; an error prints one ``error: ...`` line and returns 2."""
    args = get_parser().parse_args(argv)
    try:
        with contextlib.closing(ProgressBar()) as progress:
            summary = segment_video(config_from_args(args), progress)
    except SegmentationError as e:
        if e.summary is not None:  # stopped mid-way: what was segmented, then why it stopped
            print_pixel_share(e.summary)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_pixel_share(summary)
    if args.output:
        print(f"wrote {args.output} and {summary_path(args.output)}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
