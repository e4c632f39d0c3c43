"""Segment a whole video with any vocabulary and write the results: what ``demo/demo.py`` runs.

:func:`segment_video` takes the demo's options (:class:`SegmentationConfig`) and does every step
in the demo's order: check the options and every output path, open the input
(:mod:`ov2vss.video_io`), build the predictor (streaming or training-free), segment and write
each frame (:mod:`ov2vss.video_output`), write the JSON summary. Any front end calls it, with an
optional progress callback, and gets the same outputs and summary (docs/DEMO.md).

Every problem with the input, the options or an output is a :class:`SegmentationError` naming
the file or value; a run stopped mid-way keeps what it wrote and its JSON summary.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
from detectron2.config import CfgNode

from .config import get_ov2vss_cfg
from .data.io import FrameSizeError
from .predictor import VideoPredictor
from .training_free import RandomCLIPError, TrainingFreePredictor
from .video_io import FrameFolderSource, FrameSource, VideoFileSource
from .video_output import (
    VIDEO_EXTENSIONS,
    OutputError,
    PngFolderWriter,
    VideoWriter,
    check_writable_file,
    check_writable_folder,
    write_json,
)
from .visualization import class_colors, draw_overlay
from .vocabulary import parse_vocabulary

__all__ = [
    "SegmentationConfig",
    "SegmentationError",
    "ProgressCallback",
    "segment_video",
    "pixel_share_table",
    "summary_path",
]

logger = logging.getLogger("ov2vss.demo")  # one name for the demo's warnings, whatever calls it

FrameWriter = Union[VideoWriter, PngFolderWriter]
# progress(frames done, frames in total): (0, total) before the first frame, then after each
ProgressCallback = Callable[[int, int], None]


@dataclass
class SegmentationConfig:
    """The demo's options (``demo/demo.py --help``); one input and one vocabulary source."""

    config_file: str
    video_input: Optional[str] = None  # a video file, or
    inputs: Sequence[str] = ()  # folders of frames, glob patterns or frame files
    vocabulary: Optional[str] = None  # class names, comma separated, or
    vocabulary_file: Optional[str] = None  # one class name per line
    output: Optional[str] = None  # a video file or a folder for PNGs; None: summary only
    max_frames: Optional[int] = None
    fps: float = 10.0  # of the output video, for frame files
    alpha: float = 0.5
    seen_bias: Optional[float] = None  # None: the config's MODEL.OV2VSS.SEEN_BIAS
    training_free: bool = False
    temporal_window: int = 1
    allow_random_clip: bool = False
    opts: List[str] = field(default_factory=list)


class SegmentationError(Exception):
    """A problem with the user's input, options or outputs, reported as one line (no traceback).

    Attributes:
        summary: the summary of the frames segmented when the run stopped after segmenting
            began (printed and, with an output, written as JSON); None when it stopped before.
    """

    summary: Optional[Dict] = None


@contextlib.contextmanager
def _reported(*kinds: Type[Exception]) -> Iterator[None]:
    """Errors of ``kinds`` (bad input: a missing file, an undecodable frame, a bad vocabulary;
    an output that cannot be written) as :class:`SegmentationError` with the same message."""
    try:
        yield
    except kinds as e:
        raise SegmentationError(str(e)) from e


# ---------------------------------------------------------------------- checks before any work
def build_config(config: SegmentationConfig, vocabulary: Sequence[str]) -> CfgNode:
    """The frozen config: ``config_file`` + ``opts``, no datasets, the user's vocabulary, the
    CPU when CUDA is asked for but missing."""
    if not os.path.isfile(config.config_file):
        raise SegmentationError(f"config file not found: {config.config_file}")
    try:
        cfg = get_ov2vss_cfg(config.config_file, config.opts)
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise SegmentationError(
            f"bad config {config.config_file} / --opts {config.opts}: {e}"
        ) from e
    # the vocabulary comes from the user: no dataset needs to be registered
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.MODEL.OV2VSS.TEST_VOCABULARY = list(vocabulary)
    if config.seen_bias is not None:
        if not math.isfinite(config.seen_bias) or config.seen_bias < 0:
            raise SegmentationError(
                f"--seen-bias must be a finite number >= 0 (MODEL.OV2VSS.SEEN_BIAS), "
                f"got {config.seen_bias}"
            )
        cfg.MODEL.OV2VSS.SEEN_BIAS = config.seen_bias
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            f"MODEL.DEVICE={cfg.MODEL.DEVICE} but CUDA is not available: running on the CPU"
        )
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def check_mode(cfg: CfgNode, config: SegmentationConfig) -> None:
    """Options of the two modes (trained model / training-free), checked before any work."""
    if not config.training_free:
        for flag, given in (
            ("--temporal-window", config.temporal_window != 1),
            ("--allow-random-clip", config.allow_random_clip),
        ):
            if given:
                raise SegmentationError(f"{flag} applies to --training-free only")
        return
    if config.temporal_window < 1:
        raise SegmentationError(
            f"--temporal-window must be >= 1 frames, got {config.temporal_window}"
        )
    if cfg.MODEL.OV2VSS.SEEN_BIAS:
        raise SegmentationError("--seen-bias calibrates a trained model; --training-free has none")
    if not cfg.MODEL.CLIP.PRETRAINED and not config.allow_random_clip:
        raise SegmentationError(
            "--training-free labels pixels with CLIP alone, and MODEL.CLIP.PRETRAINED is empty: "
            "random CLIP weights would make every label noise. Give real weights (--opts "
            "MODEL.CLIP.PRETRAINED openai, or a local open_clip checkpoint file), or add "
            "--allow-random-clip to run anyway"
        )
    if cfg.MODEL.WEIGHTS:
        logger.warning(f"--training-free: MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} is not used")


def is_video_path(output: str) -> bool:
    """``output`` names a video file (by its extension); otherwise a folder for PNGs."""
    return output.lower().endswith(VIDEO_EXTENSIONS)


def summary_path(output: str) -> str:
    """Where the JSON summary goes: ``out.json`` next to ``out.mp4``, ``<folder>/summary.json``."""
    if is_video_path(output):
        return os.path.splitext(output)[0] + ".json"
    return os.path.join(output, "summary.json")


def check_outputs(output: str) -> None:
    """Create or test every output path (video or PNG folder, JSON summary) before any work."""
    with _reported(OutputError):
        if is_video_path(output):
            check_writable_file(output, "the output video")
        else:
            check_writable_folder(output, "the PNG folder")
        check_writable_file(summary_path(output), "the JSON summary", atomic=True)


def check_not_the_input(output: str, source: FrameSource) -> None:
    """``output`` must not overwrite the input video or one of the input frames."""
    if isinstance(source, VideoFileSource):
        if os.path.exists(output) and os.path.samefile(output, source.path):
            raise SegmentationError(
                f"--output {output} is the input video: it would be overwritten"
            )
    elif isinstance(source, FrameFolderSource) and not is_video_path(output):
        inputs = {os.path.realpath(p) for p in source.paths}
        for name in source.frame_names:
            path = os.path.realpath(os.path.join(output, name + ".png"))
            if path in inputs:
                raise SegmentationError(f"--output {output} would overwrite the input frame {path}")


# ---------------------------------------------------------------------- input, output, model
def open_source(config: SegmentationConfig) -> FrameSource:
    """The frames of ``video_input`` or ``inputs``."""
    with _reported(FileNotFoundError, ValueError):
        if config.video_input:
            return VideoFileSource(config.video_input, config.max_frames)
        return FrameFolderSource(config.inputs, config.max_frames, config.fps)


def open_writer(output: str, source: FrameSource) -> FrameWriter:
    """The writer of the overlays: a video file or a folder of PNGs."""
    with _reported(OutputError, RuntimeError):
        if is_video_path(output):
            h, w = source.last_frame.shape[:2]
            return VideoWriter(output, source.fps, w, h)
        return PngFolderWriter(output)


def build_predictor(cfg: CfgNode, config: SegmentationConfig) -> VideoPredictor:
    """The streaming predictor with MODEL.WEIGHTS loaded, or CLIP alone in training-free mode
    (errors as :class:`SegmentationError`)."""
    try:
        if config.training_free:
            return TrainingFreePredictor(
                cfg, config.temporal_window, config.allow_random_clip, frame_format="RGB"
            )
        predictor = VideoPredictor(cfg, frame_format="RGB")
        if cfg.MODEL.OV2VSS.SEEN_BIAS and not predictor.model.train_class_texts:
            logger.warning(
                "--seen-bias / MODEL.OV2VSS.SEEN_BIAS has no effect: the model knows no training "
                "vocabulary (no MODEL.WEIGHTS, or a checkpoint written before it was saved)"
            )
        return predictor
    except (RandomCLIPError, FileNotFoundError) as e:
        raise SegmentationError(str(e)) from e
    except (RuntimeError, ValueError, KeyError) as e:  # CLIP weights, bad config values
        raise SegmentationError(f"cannot build the model from {config.config_file}: {e}") from e


# ---------------------------------------------------------------------- segmenting
def _frames_of(source: FrameSource) -> Iterator[np.ndarray]:
    """Iterate ``source``; a frame that cannot be read becomes a :class:`SegmentationError`
    (errors of the loop body that consumes the frames pass through unchanged)."""
    with _reported(FileNotFoundError, ValueError):
        yield from source


def segment_frames(
    predictor: VideoPredictor,
    source: FrameSource,
    writer: Optional[FrameWriter],
    vocabulary: Sequence[str],
    alpha: float,
    progress: Optional[ProgressCallback] = None,
) -> Tuple[np.ndarray, int, Optional[SegmentationError]]:
    """Segment every frame of ``source``, writing the overlays to ``writer``.

    Returns the pixel count per class, the number of frames segmented and the error that
    stopped the run early (None when every frame was done). The writer is closed in any case,
    so what it wrote stays usable.
    """
    colors = class_colors(len(vocabulary))
    counts = np.zeros(len(vocabulary), np.int64)
    done, stopped = 0, None
    if progress is not None:
        progress(0, source.num_frames)
    try:
        predictor.reset(source.num_frames, source.last_frame)
        for frame in _frames_of(source):
            labels = predictor.push(frame)["sem_seg"].argmax(dim=0).cpu().numpy()
            counts += np.bincount(labels.ravel(), minlength=len(vocabulary))
            done += 1
            if writer is not None:
                vis = draw_overlay(frame, labels, vocabulary, colors, alpha)
                writer.write(vis, source.frame_names[done - 1])
            if progress is not None:
                progress(done, source.num_frames)
    except OutputError as e:
        stopped = SegmentationError(str(e))
    except SegmentationError as e:  # a frame that cannot be read
        stopped = e
    except FrameSizeError as e:
        stopped = SegmentationError(f"{source.name}: {e}")
    finally:
        if writer is not None:
            try:
                writer.close()
            except OutputError as e:
                stopped = stopped or SegmentationError(str(e))
    return counts, done, stopped


# ---------------------------------------------------------------------- the summary
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


def pixel_share_table(summary: Dict) -> str:
    """The summary's pixel shares as text: a title line, then one ``name  share%`` line per
    class, largest first."""
    done, total = summary["num_frames"], summary["input_frames"]
    which = f"{done} frames" if done == total else f"the first {done} frames"
    lines = [f"Pixel share over {which} of {summary['input']}:"]
    lines += [
        f"  {name:<30s} {100 * share:6.2f}%" for name, share in summary["pixel_share"].items()
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- the whole run
def segment_video(config: SegmentationConfig, progress: Optional[ProgressCallback] = None) -> Dict:
    """Segment the input, write the overlays and the JSON summary; returns the summary.

    Every option and output path is checked before the input is decoded or the model built.

    Raises:
        SegmentationError: naming the file or value. When the run stopped after segmenting
            began, what was written stays, the JSON summary is written when its own path can
            be, and the error's ``summary`` holds it.
    """
    if config.max_frames is not None and config.max_frames < 1:
        raise SegmentationError(f"--max-frames must be >= 1, got {config.max_frames}")
    with _reported(FileNotFoundError, ValueError):
        vocabulary = parse_vocabulary(config.vocabulary, config.vocabulary_file)
    cfg = build_config(config, vocabulary)
    check_mode(cfg, config)
    if config.output:
        check_outputs(config.output)  # before decoding the input or building the model
    source = open_source(config)
    writer = None
    if config.output:
        check_not_the_input(config.output, source)
        writer = open_writer(config.output, source)
    predictor = build_predictor(cfg, config)
    predictor.model.set_test_vocabulary(vocabulary)

    counts, done, stopped = segment_frames(
        predictor, source, writer, vocabulary, config.alpha, progress
    )
    summary = pixel_summary(counts, vocabulary, done, source.last_frame.shape[:2])
    summary.update(input=source.name, input_frames=source.num_frames)
    summary.update(weights_summary(cfg, predictor))
    if config.output:
        json_path = summary_path(config.output)
        summary.update(
            output=os.path.abspath(config.output),
            frames_written=writer.frames_written,
            error=str(stopped) if stopped else None,
        )
        try:
            write_json(json_path, summary, "the JSON summary")
        except OutputError as e:
            stopped = SegmentationError(f"{stopped}; {e}" if stopped else str(e))
        else:
            if stopped:
                how_far = (
                    f"all {done} frames were segmented"
                    if done == source.num_frames
                    else f"stopped after {done} of {source.num_frames} frames"
                )
                stopped = SegmentationError(f"{stopped} ({how_far}; {json_path} summarises them)")
    if stopped:
        stopped.summary = summary
        raise stopped
    return summary
