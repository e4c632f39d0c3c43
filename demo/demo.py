#!/usr/bin/env python
"""OV2VSS demo: segment a video (or a folder of frames) with any list of class names.

    python demo/demo.py --config-file configs/toy/ov2vss_tiny_cpu.yaml \
        --video-input street.mp4 --vocabulary "road, car, person, bicycle, building, sky" \
        --output out.mp4 [--max-frames 100] [--opts MODEL.WEIGHTS model.pth INPUT.MIN_SIZE_TEST 480]

Input: ``--video-input FILE`` (decoded with PyAV, OpenCV as a fallback) or ``--input`` frames
(a folder, glob patterns or files, sorted by name). Vocabulary: ``--vocabulary`` (comma
separated) or ``--vocabulary-file`` (one class per line; '#' starts a comment). Output: a video
(.mp4/.mkv/.avi/.mov) or a folder of PNGs, with the labels blended over the frames and a legend
of the classes present in each frame. The share of pixels of every class over the whole video
is printed and written as JSON: ``out.json`` next to ``out.mp4``, ``<folder>/summary.json``
for PNGs. Frames are segmented by the streaming :class:`ov2vss.predictor.VideoPredictor`
(each frame encoded once), with the windows the inference mapper would build.

This script is the command line only; reading and writing videos, drawing and vocabularies
are importable: :mod:`ov2vss.video_io`, :mod:`ov2vss.visualization`, :mod:`ov2vss.vocabulary`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Dict, Iterator, Optional, Sequence, Tuple, Type

import numpy as np
import torch
import tqdm
from detectron2.config import CfgNode
from PIL import Image

from ov2vss.config import get_ov2vss_cfg
from ov2vss.predictor import FrameSizeError, VideoPredictor
from ov2vss.video_io import (
    VIDEO_EXTENSIONS,
    FrameFolderSource,
    FrameSource,
    VideoFileSource,
    VideoWriter,
)
from ov2vss.visualization import class_colors, draw_overlay
from ov2vss.vocabulary import parse_vocabulary

logger = logging.getLogger("ov2vss.demo")


class DemoError(Exception):
    """A problem with the user's input, reported as one line (no traceback)."""


@contextlib.contextmanager
def user_input_errors(
    kinds: Tuple[Type[Exception], ...] = (FileNotFoundError, ValueError)
) -> Iterator[None]:
    """Turn the errors the package raises for bad input (a missing file, an undecodable
    frame, a bad vocabulary, ...) into :class:`DemoError` with the same message."""
    try:
        yield
    except kinds as e:
        raise DemoError(str(e)) from e


# ---------------------------------------------------------------------- arguments
def get_parser() -> argparse.ArgumentParser:
    """The demo's command-line arguments (see the module docstring)."""
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
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs"
    )
    return parser


def setup_cfg(args: argparse.Namespace, vocabulary: Sequence[str]) -> CfgNode:
    """The frozen config: ``--config-file`` + ``--opts``, no datasets, the user's vocabulary,
    the CPU when CUDA is asked for but missing."""
    if not os.path.isfile(args.config_file):
        raise DemoError(f"config file not found: {args.config_file}")
    try:
        cfg = get_ov2vss_cfg(args.config_file, args.opts)
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise DemoError(f"bad config {args.config_file} / --opts {args.opts}: {e}") from e
    # the vocabulary comes from the user: no dataset needs to be registered
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.MODEL.OV2VSS.TEST_VOCABULARY = list(vocabulary)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            f"MODEL.DEVICE={cfg.MODEL.DEVICE} but CUDA is not available: running on the CPU"
        )
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def open_source(args: argparse.Namespace) -> FrameSource:
    """The frames of ``--video-input`` or ``--input``."""
    with user_input_errors():
        if args.video_input:
            return VideoFileSource(args.video_input, args.max_frames)
        return FrameFolderSource(args.input, args.max_frames, args.fps)


def frames_of(source: FrameSource) -> Iterator[np.ndarray]:
    """Iterate ``source``; a frame that cannot be read becomes a :class:`DemoError` (errors
    of the loop body that consumes the frames pass through unchanged)."""
    with user_input_errors():
        yield from source


# ---------------------------------------------------------------------- output
def summary_path(output: str) -> str:
    """Where the JSON summary goes: ``out.json`` next to ``out.mp4``, ``<folder>/summary.json``."""
    if output.lower().endswith(VIDEO_EXTENSIONS):
        return os.path.splitext(output)[0] + ".json"
    return os.path.join(output, "summary.json")


def pixel_summary(
    counts: np.ndarray, vocabulary: Sequence[str], num_frames: int, size: Tuple[int, int]
) -> Dict:
    """Share of pixels of every class (argmax label) over all frames; shares sum to 1."""
    total = max(1, int(counts.sum()))
    order = np.argsort(-counts, kind="stable")
    return {
        "vocabulary": list(vocabulary),
        "num_frames": num_frames,
        "frame_size": {"width": size[1], "height": size[0]},
        "pixel_share": {vocabulary[i]: float(counts[i]) / total for i in order},
    }


# ---------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> Dict:
    """Segment the input, write the overlays and the summary; returns the summary."""
    if args.max_frames is not None and args.max_frames < 1:
        raise DemoError(f"--max-frames must be >= 1, got {args.max_frames}")
    with user_input_errors():
        vocabulary = parse_vocabulary(args.vocabulary, args.vocabulary_file)
    cfg = setup_cfg(args, vocabulary)
    source = open_source(args)

    try:
        predictor = VideoPredictor(cfg, frame_format="RGB")
    except FileNotFoundError as e:
        raise DemoError(str(e)) from e
    except (RuntimeError, ValueError, KeyError) as e:  # CLIP weights, bad config values
        raise DemoError(f"cannot build the model from {args.config_file}: {e}") from e
    predictor.model.set_test_vocabulary(vocabulary)

    writer, png_dir = None, None
    if args.output:
        if args.output.lower().endswith(VIDEO_EXTENSIONS):
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            h, w = source.last_frame.shape[:2]
            with user_input_errors((RuntimeError,)):
                writer = VideoWriter(args.output, source.fps, w, h)
        else:
            png_dir = args.output
            os.makedirs(png_dir, exist_ok=True)
    colors = class_colors(len(vocabulary))
    counts = np.zeros(len(vocabulary), np.int64)
    try:
        predictor.reset(source.num_frames, source.last_frame)
        progress = tqdm.tqdm(
            frames_of(source), total=source.num_frames, unit="frame", desc="OV2VSS"
        )
        for index, frame in enumerate(progress):
            out = predictor.push(frame)
            labels = out["sem_seg"].argmax(dim=0).cpu().numpy()
            counts += np.bincount(labels.ravel(), minlength=len(vocabulary))
            if writer is not None or png_dir is not None:
                vis = draw_overlay(frame, labels, vocabulary, colors, args.alpha)
                if writer is not None:
                    writer.write(vis)
                else:
                    name = source.frame_names[index] + ".png"
                    Image.fromarray(vis).save(os.path.join(png_dir, name))
    except FrameSizeError as e:
        raise DemoError(f"{source.name}: {e}") from e
    finally:
        if writer is not None:
            writer.close()

    summary = pixel_summary(counts, vocabulary, source.num_frames, source.last_frame.shape[:2])
    print(f"\nPixel share over {source.num_frames} frames of {source.name}:")
    for name, share in summary["pixel_share"].items():
        print(f"  {name:<30s} {100 * share:6.2f}%")
    if args.output:
        summary["output"] = os.path.abspath(args.output)
        with open(summary_path(args.output), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        print(f"wrote {args.output} and {summary_path(args.output)}")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; bad input prints one ``error: ...`` line and returns 2."""
    args = get_parser().parse_args(argv)
    try:
        run(args)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
