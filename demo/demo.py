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
for PNGs; it also records the weights used (``"weights": null`` for a randomly initialised
model, whose labels are meaningless but repeatable: it is built with a fixed seed) and how many
frames were segmented and written. Frames are segmented by the streaming
:class:`ov2vss.predictor.VideoPredictor` (each frame encoded once), with the windows the
inference mapper would build.

Every output path is created or tested before the input is decoded or the model is built; an
error (here or later, e.g. a full disk) is one ``error:`` line naming the path, exit status 2.
A run stopped by an error keeps what it wrote (the video is closed, the PNGs stay) and still
writes the JSON summary of the frames segmented, when its own path can be written.

``--seen-bias G`` calibrates the trained model (``MODEL.OV2VSS.SEEN_BIAS``): G is subtracted
from the log-probabilities of the vocabulary's classes that were in the checkpoint's training
vocabulary. ``--training-free`` needs no OV2VSS weights: CLIP alone labels each pixel
(:mod:`ov2vss.training_free`; real CLIP weights required, ``--temporal-window k`` averages the
last k frames).

This script is the command line only; reading and writing videos, drawing and vocabularies
are importable: :mod:`ov2vss.video_io`, :mod:`ov2vss.visualization`, :mod:`ov2vss.vocabulary`.
"""

from __future__ import annotations

import ov2vss  # noqa: F401  isort: skip  (first: registers everything, quiets import noise)
import argparse
import contextlib
import logging
import math
import os
import sys
from typing import Dict, Iterator, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
import tqdm
from detectron2.config import CfgNode

from ov2vss.config import get_ov2vss_cfg
from ov2vss.predictor import FrameSizeError, VideoPredictor
from ov2vss.training_free import RandomCLIPError, TrainingFreePredictor
from ov2vss.video_io import (
    VIDEO_EXTENSIONS,
    FrameFolderSource,
    FrameSource,
    OutputError,
    PngFolderWriter,
    VideoFileSource,
    VideoWriter,
    check_writable_file,
    check_writable_folder,
    write_json,
)
from ov2vss.visualization import class_colors, draw_overlay
from ov2vss.vocabulary import parse_vocabulary

logger = logging.getLogger("ov2vss.demo")

FrameWriter = Union[VideoWriter, PngFolderWriter]


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
    if args.seen_bias is not None:
        if not math.isfinite(args.seen_bias) or args.seen_bias < 0:
            raise DemoError(
                f"--seen-bias must be a finite number >= 0 (MODEL.OV2VSS.SEEN_BIAS), "
                f"got {args.seen_bias}"
            )
        cfg.MODEL.OV2VSS.SEEN_BIAS = args.seen_bias
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
def is_video_path(output: str) -> bool:
    """``--output`` names a video file (by its extension); otherwise a folder for PNGs."""
    return output.lower().endswith(VIDEO_EXTENSIONS)


def summary_path(output: str) -> str:
    """Where the JSON summary goes: ``out.json`` next to ``out.mp4``, ``<folder>/summary.json``."""
    if is_video_path(output):
        return os.path.splitext(output)[0] + ".json"
    return os.path.join(output, "summary.json")


def check_outputs(output: str) -> None:
    """Create or test every output path (video or PNG folder, JSON summary) before any work."""
    with output_errors():
        if is_video_path(output):
            check_writable_file(output, "the output video")
        else:
            check_writable_folder(output, "the PNG folder")
        check_writable_file(summary_path(output), "the JSON summary", atomic=True)


def check_not_the_input(output: str, source: FrameSource) -> None:
    """``--output`` must not overwrite the input video or one of the input frames."""
    if isinstance(source, VideoFileSource):
        if os.path.exists(output) and os.path.samefile(output, source.path):
            raise DemoError(f"--output {output} is the input video: it would be overwritten")
    elif isinstance(source, FrameFolderSource) and not is_video_path(output):
        inputs = {os.path.realpath(p) for p in source.paths}
        for name in source.frame_names:
            path = os.path.realpath(os.path.join(output, name + ".png"))
            if path in inputs:
                raise DemoError(f"--output {output} would overwrite the input frame {path}")


@contextlib.contextmanager
def output_errors() -> Iterator[None]:
    """An output that cannot be written becomes a :class:`DemoError` (its message names it)."""
    try:
        yield
    except OutputError as e:
        raise DemoError(str(e)) from e


def open_writer(output: str, source: FrameSource) -> FrameWriter:
    """The writer of the overlays: a video file or a folder of PNGs."""
    with output_errors(), user_input_errors((RuntimeError,)):
        if is_video_path(output):
            h, w = source.last_frame.shape[:2]
            return VideoWriter(output, source.fps, w, h)
        return PngFolderWriter(output)


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


def _local_path(path: str) -> str:
    return os.path.abspath(path) if path and os.path.exists(path) else path


def weights_summary(cfg: CfgNode, predictor: VideoPredictor) -> Dict:
    """What the predictions come from: MODEL.WEIGHTS (None: a randomly initialised, seeded
    model), CLIP's architecture and pretrained tag or file (None: random), and the warning
    given when MODEL.WEIGHTS is empty; the mode ("ov2vss" or "training-free") and the seen
    bias."""
    training_free = isinstance(predictor, TrainingFreePredictor)  # MODEL.WEIGHTS unused
    return {
        "weights": None if training_free else _local_path(cfg.MODEL.WEIGHTS) or None,
        "clip_arch": cfg.MODEL.CLIP.ARCH,
        "clip_pretrained": _local_path(cfg.MODEL.CLIP.PRETRAINED) or None,
        "weights_warning": predictor.weights_warning,
        "mode": "training-free" if training_free else "ov2vss",
        "seen_bias": cfg.MODEL.OV2VSS.SEEN_BIAS,
    }


# ---------------------------------------------------------------------- main
def check_mode(cfg: CfgNode, args: argparse.Namespace) -> None:
    """Options of the two modes (trained model / --training-free), checked before any work."""
    if not args.training_free:
        for flag, given in (
            ("--temporal-window", args.temporal_window != 1),
            ("--allow-random-clip", args.allow_random_clip),
        ):
            if given:
                raise DemoError(f"{flag} applies to --training-free only")
        return
    if args.temporal_window < 1:
        raise DemoError(f"--temporal-window must be >= 1 frames, got {args.temporal_window}")
    if cfg.MODEL.OV2VSS.SEEN_BIAS:
        raise DemoError("--seen-bias calibrates a trained model; --training-free has none")
    if not cfg.MODEL.CLIP.PRETRAINED and not args.allow_random_clip:
        raise DemoError(
            "--training-free labels pixels with CLIP alone, and MODEL.CLIP.PRETRAINED is empty: "
            "random CLIP weights would make every label noise. Give real weights (--opts "
            "MODEL.CLIP.PRETRAINED openai, or a local open_clip checkpoint file), or add "
            "--allow-random-clip to run anyway"
        )
    if cfg.MODEL.WEIGHTS:
        logger.warning(f"--training-free: MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} is not used")


def build_predictor(cfg: CfgNode, args: argparse.Namespace) -> VideoPredictor:
    """The streaming predictor with MODEL.WEIGHTS loaded, or CLIP alone with --training-free
    (errors as :class:`DemoError`)."""
    try:
        if args.training_free:
            return TrainingFreePredictor(
                cfg, args.temporal_window, args.allow_random_clip, frame_format="RGB"
            )
        predictor = VideoPredictor(cfg, frame_format="RGB")
        if cfg.MODEL.OV2VSS.SEEN_BIAS and not predictor.model.train_class_texts:
            logger.warning(
                "--seen-bias / MODEL.OV2VSS.SEEN_BIAS has no effect: the model knows no training "
                "vocabulary (no MODEL.WEIGHTS, or a checkpoint written before it was saved)"
            )
        return predictor
    except RandomCLIPError as e:
        raise DemoError(str(e)) from e
    except FileNotFoundError as e:
        raise DemoError(str(e)) from e
    except (RuntimeError, ValueError, KeyError) as e:  # CLIP weights, bad config values
        raise DemoError(f"cannot build the model from {args.config_file}: {e}") from e


def segment(
    predictor: VideoPredictor,
    source: FrameSource,
    writer: Optional[FrameWriter],
    vocabulary: Sequence[str],
    alpha: float,
) -> Tuple[np.ndarray, int, Optional[DemoError]]:
    """Segment every frame of ``source``, writing the overlays to ``writer``.

    Returns the pixel count per class, the number of frames segmented and the error that
    stopped the run early (None when every frame was done). The writer is closed in any case,
    so what it wrote stays usable.
    """
    colors = class_colors(len(vocabulary))
    counts = np.zeros(len(vocabulary), np.int64)
    done, stopped = 0, None
    progress = tqdm.tqdm(frames_of(source), total=source.num_frames, unit="frame", desc="OV2VSS")
    try:
        predictor.reset(source.num_frames, source.last_frame)
        for frame in progress:
            labels = predictor.push(frame)["sem_seg"].argmax(dim=0).cpu().numpy()
            counts += np.bincount(labels.ravel(), minlength=len(vocabulary))
            done += 1
            if writer is not None:
                vis = draw_overlay(frame, labels, vocabulary, colors, alpha)
                writer.write(vis, source.frame_names[done - 1])
    except OutputError as e:
        stopped = DemoError(str(e))
    except DemoError as e:  # a frame that cannot be read
        stopped = e
    except FrameSizeError as e:
        stopped = DemoError(f"{source.name}: {e}")
    finally:
        progress.close()
        if writer is not None:
            try:
                writer.close()
            except OutputError as e:
                stopped = stopped or DemoError(str(e))
    return counts, done, stopped


def run(args: argparse.Namespace) -> Dict:
    """Segment the input, write the overlays and the summary; returns the summary."""
    if args.max_frames is not None and args.max_frames < 1:
        raise DemoError(f"--max-frames must be >= 1, got {args.max_frames}")
    with user_input_errors():
        vocabulary = parse_vocabulary(args.vocabulary, args.vocabulary_file)
    cfg = setup_cfg(args, vocabulary)
    check_mode(cfg, args)
    if args.output:
        check_outputs(args.output)  # before decoding the input or building the model
    source = open_source(args)
    writer = None
    if args.output:
        check_not_the_input(args.output, source)
        writer = open_writer(args.output, source)
    predictor = build_predictor(cfg, args)
    predictor.model.set_test_vocabulary(vocabulary)

    counts, done, stopped = segment(predictor, source, writer, vocabulary, args.alpha)
    summary = pixel_summary(counts, vocabulary, done, source.last_frame.shape[:2])
    summary.update(input=source.name, input_frames=source.num_frames)
    summary.update(weights_summary(cfg, predictor))
    which = f"{done} frames" if done == source.num_frames else f"the first {done} frames"
    print(f"\nPixel share over {which} of {source.name}:")
    for name, share in summary["pixel_share"].items():
        print(f"  {name:<30s} {100 * share:6.2f}%")
    if args.output:
        json_path = summary_path(args.output)
        summary.update(
            output=os.path.abspath(args.output),
            frames_written=writer.frames_written,
            error=str(stopped) if stopped else None,
        )
        try:
            write_json(json_path, summary, "the JSON summary")
        except OutputError as e:
            stopped = DemoError(f"{stopped}; {e}" if stopped else str(e))
        else:
            if stopped:
                how_far = (
                    f"all {done} frames were segmented"
                    if done == source.num_frames
                    else f"stopped after {done} of {source.num_frames} frames"
                )
                stopped = DemoError(f"{stopped} ({how_far}; {json_path} summarises them)")
            else:
                print(f"wrote {args.output} and {json_path}")
    if stopped:
        raise stopped
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; an error prints one ``error: ...`` line and returns 2."""
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
