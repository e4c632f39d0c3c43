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
(each frame encoded once), with the clips the inference mapper would build.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from fractions import Fraction
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import tqdm
from detectron2.config import CfgNode, get_cfg
from detectron2.utils.colormap import colormap
from PIL import Image

from ov2vss import add_ov2vss_config
from ov2vss.data.io import read_frame
from ov2vss.predictor import FrameSizeError, VideoPredictor

logger = logging.getLogger("ov2vss.demo")

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DemoError(Exception):
    """A problem with the user's input, reported as one line (no traceback)."""


# ---------------------------------------------------------------------- arguments
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="OV2VSS demo: open-vocabulary video semantic segmentation")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a config file")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--video-input", metavar="FILE", help="a video file")
    src.add_argument("--input", nargs="+", metavar="PATH", help="a folder of frames, glob patterns or frame files")
    voc = parser.add_mutually_exclusive_group(required=True)
    voc.add_argument("--vocabulary", metavar="NAMES", help='class names, comma separated: "road, car, person"')
    voc.add_argument("--vocabulary-file", metavar="FILE", help="a text file with one class name per line")
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="a video file (.mp4, .mkv, .avi, .mov, .webm) or a folder for PNGs; "
        "without it only the pixel-share summary is printed",
    )
    parser.add_argument("--max-frames", type=int, default=None, help="only the first N frames")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the output video for --input frames")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the label colours")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return parser


def parse_vocabulary(names: Optional[str] = None, file: Optional[str] = None) -> List[str]:
    """Class names from ``--vocabulary`` (comma separated) or ``--vocabulary-file`` (one per line)."""
    if file is not None:
        if not os.path.isfile(file):
            raise DemoError(f"vocabulary file not found: {file}")
        with open(file, encoding="utf-8") as f:
            vocab = [line.split("#", 1)[0].strip() for line in f]
        source = f"vocabulary file {file}"
    else:
        vocab = [n.strip() for n in (names or "").split(",")]
        source = "--vocabulary"
    vocab = [n for n in vocab if n]
    if not vocab:
        raise DemoError(f"the vocabulary is empty ({source}): give at least one class name")
    seen: Dict[str, str] = {}
    dupes = []
    for name in vocab:
        key = " ".join(name.lower().split())
        if key in seen:
            dupes.append(name)
        seen.setdefault(key, name)
    if dupes:
        raise DemoError(f"duplicate class names in {source}: {dupes}")
    return vocab


def setup_cfg(args: argparse.Namespace, vocabulary: Sequence[str]) -> CfgNode:
    if not os.path.isfile(args.config_file):
        raise DemoError(f"config file not found: {args.config_file}")
    cfg = get_cfg()
    add_ov2vss_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise DemoError(f"bad config {args.config_file} / --opts {args.opts}: {e}") from e
    # the vocabulary comes from the user: no dataset needs to be registered
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.MODEL.OV2VSS.TEST_VOCABULARY = list(vocabulary)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"MODEL.DEVICE={cfg.MODEL.DEVICE} but CUDA is not available: running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


# ---------------------------------------------------------------------- input
class FrameSource:
    """Frames of a video, in order, as RGB uint8 arrays; known length and last frame."""

    def __init__(self, name: str, num_frames: int, last_frame: np.ndarray, fps: Fraction, frame_names: List[str]):
        self.name = name
        self.num_frames = num_frames
        self.last_frame = last_frame
        self.fps = fps
        self.frame_names = frame_names  # used for PNG output

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError


class VideoFileSource(FrameSource):
    """A video file decoded with PyAV (OpenCV when PyAV is missing or cannot open it).

    A first pass counts the frames (up to ``max_frames``), checks their sizes and keeps the
    last one (the random frame of the first half of the video); the second pass streams.
    """

    def __init__(self, path: str, max_frames: Optional[int] = None):
        if not os.path.isfile(path):
            raise DemoError(f"video file not found: {path}")
        self.path = path
        self.max_frames = max_frames
        errors = []
        for backend in ("pyav", "opencv"):
            try:
                self.backend = backend
                fps = self._fps()
                first, last, count = None, None, 0
                for frame in self._decode():
                    if first is None:
                        first = frame
                    elif frame.shape != first.shape:
                        raise DemoError(
                            f"frame {count} of {path} has size {frame.shape[1]}x{frame.shape[0]} (WxH) "
                            f"but frame 0 has size {first.shape[1]}x{first.shape[0]}: "
                            "all frames of a video must have the same size"
                        )
                    last, count = frame, count + 1
                break
            except DemoError:
                raise
            except Exception as e:  # decoder errors of either library: try the next one
                errors.append(f"{backend}: {e}")
        else:
            raise DemoError(f"cannot decode video {path} ({'; '.join(errors)})")
        if count == 0:
            raise DemoError(f"video {path} has no frames")
        super().__init__(path, count, last, fps, [f"{i:06d}" for i in range(count)])

    def _fps(self) -> Fraction:
        if self.backend == "pyav":
            import av

            with av.open(self.path) as container:
                if not container.streams.video:
                    raise ValueError("no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.base_rate
                return Fraction(rate) if rate else Fraction(25)
        cap = cv2.VideoCapture(self.path)
        try:
            if not cap.isOpened():
                raise ValueError("OpenCV cannot open it")
            rate = cap.get(cv2.CAP_PROP_FPS)
        finally:
            cap.release()
        return Fraction(rate).limit_denominator(1001) if rate and rate > 0 else Fraction(25)

    def _decode(self) -> Iterator[np.ndarray]:
        limit = self.max_frames
        if self.backend == "pyav":
            import av

            with av.open(self.path) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if limit is not None and i >= limit:
                        return
                    yield frame.to_ndarray(format="rgb24")
            return
        cap = cv2.VideoCapture(self.path)
        try:
            i = 0
            while limit is None or i < limit:
                ok, frame = cap.read()
                if not ok:
                    return
                yield np.ascontiguousarray(frame[:, :, ::-1])
                i += 1
        finally:
            cap.release()

    def __iter__(self) -> Iterator[np.ndarray]:
        for i, frame in enumerate(self._decode()):
            if i >= self.num_frames:
                return
            yield frame


class FrameFolderSource(FrameSource):
    """Frame files (a folder, glob patterns or files), sorted by name, read as RGB."""

    def __init__(self, inputs: Sequence[str], max_frames: Optional[int] = None, fps: float = 10.0):
        paths: List[str] = []
        for item in inputs:
            if os.path.isdir(item):
                found = [os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS)]
                if not found:
                    raise DemoError(f"folder {item} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
                paths += sorted(found)
            elif glob.has_magic(item):
                found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
                if not found:
                    raise DemoError(f"no files match {item}")
                paths += found
            elif os.path.isfile(item):
                paths.append(item)
            else:
                raise DemoError(f"input not found: {item}")
        if max_frames is not None:
            paths = paths[:max_frames]
        self.paths = paths
        # sizes from the file headers: a size change is reported before any model work
        sizes = []
        for p in paths:
            try:
                with Image.open(p) as img:
                    sizes.append(img.size)
            except (OSError, ValueError) as e:
                raise DemoError(f"cannot read frame {p}: {e}") from e
        for i, size in enumerate(sizes):
            if size != sizes[0]:
                raise DemoError(
                    f"frame {paths[i]} has size {size[0]}x{size[1]} (WxH) but {paths[0]} has size "
                    f"{sizes[0][0]}x{sizes[0][1]}: all frames of a video must have the same size"
                )
        names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
        if len(set(names)) != len(names):  # frames from several folders: number them instead
            names = [f"{i:06d}" for i in range(len(paths))]
        super().__init__(", ".join(inputs), len(paths), self._read(len(paths) - 1), Fraction(fps), names)

    def _read(self, index: int) -> np.ndarray:
        try:
            return read_frame(self.paths[index], "RGB")
        except (FileNotFoundError, ValueError) as e:
            raise DemoError(str(e)) from e

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.num_frames):
            yield self._read(i)


# ---------------------------------------------------------------------- output
def class_colors(num_classes: int) -> np.ndarray:
    """[N, 3] uint8 RGB colours: detectron2's palette, then seeded random colours."""
    base = colormap(rgb=True, maximum=255).astype(np.uint8)
    if num_classes <= len(base):
        return base[:num_classes]
    extra = np.random.default_rng(0).integers(0, 256, (num_classes - len(base), 3), dtype=np.uint8)
    return np.concatenate([base, extra])


def draw_overlay(
    frame: np.ndarray, labels: np.ndarray, names: Sequence[str], colors: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Blend the label colours over an RGB frame and draw a legend of the classes present,
    largest first."""
    out = (frame.astype(np.float32) * (1 - alpha) + colors[labels].astype(np.float32) * alpha).astype(np.uint8)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    h, w = out.shape[:2]
    scale = max(0.3, min(1.0, h / 600))
    thickness = 1 if scale < 0.7 else 2
    (_, text_h), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    row = text_h + baseline + 4
    max_rows = max(1, (h - 4) // row)
    shown = present[:max_rows]
    if len(present) > max_rows:  # keep the legend inside the frame
        shown = present[: max_rows - 1]
    labels_text = [names[c] for c in shown] + (
        [f"+{len(present) - len(shown)} more"] if len(shown) < len(present) else []
    )
    width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] for t in labels_text)
    box_w = min(w, width + row + 8)
    box_h = min(h, row * len(labels_text) + 4)
    panel = out[:box_h, :box_w].astype(np.float32)
    out[:box_h, :box_w] = (panel * 0.35).astype(np.uint8)  # darken behind the text
    for i, text in enumerate(labels_text):
        y0 = 2 + i * row
        if i < len(shown):
            color = tuple(int(v) for v in colors[shown[i]])
            cv2.rectangle(out, (4, y0 + 2), (4 + row - 6, y0 + row - 4), color, thickness=-1)
        cv2.putText(
            out,
            text,
            (row + 2, y0 + text_h + 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    return out


class VideoWriter:
    """H.264 (or MPEG-4) video through PyAV; odd sizes are padded to even (yuv420p)."""

    def __init__(self, path: str, fps: Fraction, width: int, height: int):
        import av

        self.container = av.open(path, mode="w")
        self.stream = None
        for codec in ("libx264", "h264", "mpeg4"):
            try:
                self.stream = self.container.add_stream(codec, rate=fps)
                break
            except (ValueError, av.FFmpegError):
                continue
        if self.stream is None:
            self.container.close()
            raise DemoError(f"no H.264/MPEG-4 encoder available in PyAV to write {path}; use a folder for PNGs")
        self.stream.width = width + width % 2
        self.stream.height = height + height % 2
        self.stream.pix_fmt = "yuv420p"

    def write(self, frame: np.ndarray) -> None:
        import av

        h, w = frame.shape[:2]
        if (w, h) != (self.stream.width, self.stream.height):
            frame = np.pad(frame, ((0, self.stream.height - h), (0, self.stream.width - w), (0, 0)))
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def summary_path(output: str) -> str:
    """Where the JSON summary goes: ``out.json`` next to ``out.mp4``, ``<folder>/summary.json``."""
    if output.lower().endswith(VIDEO_EXTENSIONS):
        return os.path.splitext(output)[0] + ".json"
    return os.path.join(output, "summary.json")


def pixel_summary(counts: np.ndarray, vocabulary: Sequence[str], num_frames: int, size: Tuple[int, int]) -> Dict:
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
    if args.max_frames is not None and args.max_frames < 1:
        raise DemoError(f"--max-frames must be >= 1, got {args.max_frames}")
    vocabulary = parse_vocabulary(args.vocabulary, args.vocabulary_file)
    cfg = setup_cfg(args, vocabulary)
    if args.video_input:
        source: FrameSource = VideoFileSource(args.video_input, args.max_frames)
    else:
        source = FrameFolderSource(args.input, args.max_frames, args.fps)

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
            writer = VideoWriter(args.output, source.fps, w, h)
        else:
            png_dir = args.output
            os.makedirs(png_dir, exist_ok=True)
    colors = class_colors(len(vocabulary))
    counts = np.zeros(len(vocabulary), np.int64)
    try:
        predictor.reset(source.num_frames, source.last_frame)
        for index, frame in enumerate(tqdm.tqdm(source, total=source.num_frames, unit="frame", desc="OV2VSS")):
            out = predictor.push(frame)
            labels = out["sem_seg"].argmax(dim=0).cpu().numpy()
            counts += np.bincount(labels.ravel(), minlength=len(vocabulary))
            if writer is not None or png_dir is not None:
                vis = draw_overlay(frame, labels, vocabulary, colors, args.alpha)
                if writer is not None:
                    writer.write(vis)
                else:
                    Image.fromarray(vis).save(os.path.join(png_dir, source.frame_names[index] + ".png"))
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
