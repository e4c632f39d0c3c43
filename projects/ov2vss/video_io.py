"""Reading videos: a video file, or a folder of frames (writing them: :mod:`ov2vss.video_output`).

A :class:`FrameSource` yields the frames of one video in order as RGB uint8 arrays and knows
up front how many there are and what the last one is: what
:meth:`ov2vss.predictor.VideoPredictor.reset` needs to give every frame the random frame the
inference mapper would give it (docs/DEMO.md). Errors name the file or frame:
FileNotFoundError for missing input, ValueError for undecodable input and
:class:`~ov2vss.data.io.FrameSizeError` (a ValueError) for a frame of another size.
"""

from __future__ import annotations

import glob
import os
from fractions import Fraction
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .data.io import FrameSizeError, check_same_size, read_frame
from .fileio import read_image_size

__all__ = ["FrameSource", "VideoFileSource", "FrameFolderSource", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _check_max_frames(max_frames: Optional[int]) -> None:
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")


class FrameSource:
    """Frames of a video, in order, as RGB uint8 HxWx3 arrays (iterate over it).

    Attributes:
        name: the video, for messages.
        num_frames: how many frames iteration yields.
        last_frame: the final frame (the random frame of the video's first half).
        fps: frame rate, for writing the output video.
        frame_names: one file stem per frame, for writing PNGs.
    """

    def __init__(
        self,
        name: str,
        num_frames: int,
        last_frame: np.ndarray,
        fps: Fraction,
        frame_names: List[str],
    ):
        self.name = name
        self.num_frames = num_frames
        self.last_frame = last_frame
        self.fps = fps
        self.frame_names = frame_names

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError


class VideoFileSource(FrameSource):
    """A video file decoded with PyAV (OpenCV when PyAV is missing or cannot open it).

    A first pass counts the frames (up to ``max_frames``), checks their sizes and keeps the
    last one; iteration decodes the file again and streams.

    Args:
        path: the video file.
        max_frames: only the first ``max_frames`` frames (None: all).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: neither PyAV nor OpenCV can decode it, it has no frames, or
            ``max_frames`` < 1.
        FrameSizeError: a frame's size differs from frame 0's.
    """

    def __init__(self, path: str, max_frames: Optional[int] = None):
        _check_max_frames(max_frames)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"video file not found: {path}")
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
                    else:
                        check_same_size(frame, f"{count} of {path}", first, "frame 0")
                    last, count = frame, count + 1
                break
            except FrameSizeError:
                raise
            except Exception as e:  # decoder errors of either library: try the next one
                errors.append(f"{backend}: {e}")
        else:
            raise ValueError(f"cannot decode video {path} ({'; '.join(errors)})")
        if count == 0:
            raise ValueError(f"video {path} has no frames")
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


def _header_size(path: str) -> Tuple[int, int]:
    """(H, W) of a frame file from its header; ValueError as for a frame that cannot be decoded."""
    try:
        return read_image_size(path)
    except OSError as e:  # PIL's own message, as data.io.read_frame gives it
        raise ValueError(f"cannot read frame {path}: {e.__cause__ or e}") from e


class FrameFolderSource(FrameSource):
    """Frame files read as RGB, in the order of their names.

    Args:
        inputs: folders (their image files, sorted by name), glob patterns (the matching
            files, sorted) or frame files, concatenated in the given order.
        max_frames: only the first ``max_frames`` frames (None: all).
        fps: frame rate of the output video.

    The sizes in the file headers are compared up front, so a size change is reported
    before any model work.

    Raises:
        FileNotFoundError: an input does not exist, a folder/pattern holds no image, or
            ``inputs`` is empty.
        ValueError: a frame cannot be read, or ``max_frames`` < 1.
        FrameSizeError: a frame's size differs from the first frame's.
    """

    def __init__(self, inputs: Sequence[str], max_frames: Optional[int] = None, fps: float = 10.0):
        _check_max_frames(max_frames)
        paths: List[str] = []
        for item in inputs:
            if os.path.isdir(item):
                found = [
                    os.path.join(item, f)
                    for f in os.listdir(item)
                    if f.lower().endswith(IMAGE_EXTENSIONS)
                ]
                if not found:
                    raise FileNotFoundError(
                        f"folder {item} has no image files ({', '.join(IMAGE_EXTENSIONS)})"
                    )
                paths += sorted(found)
            elif glob.has_magic(item):
                found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
                if not found:
                    raise FileNotFoundError(f"no files match {item}")
                paths += found
            elif os.path.isfile(item):
                paths.append(item)
            else:
                raise FileNotFoundError(f"input not found: {item}")
        if max_frames is not None:
            paths = paths[:max_frames]
        if not paths:
            raise FileNotFoundError("no frames given")
        self.paths = paths
        sizes = [_header_size(p) for p in paths]  # (H, W)
        for path, size in zip(paths, sizes):
            check_same_size(size, path, sizes[0], paths[0])
        names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
        if len(set(names)) != len(names):  # frames from several folders: number them instead
            names = [f"{i:06d}" for i in range(len(paths))]
        last = read_frame(paths[-1], "RGB")
        super().__init__(", ".join(inputs), len(paths), last, Fraction(fps), names)

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            yield read_frame(path, "RGB")
