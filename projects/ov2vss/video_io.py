"""Reading videos (a video file, or a folder of frames) and writing videos.

A :class:`FrameSource` yields the frames of one video in order as RGB uint8 arrays and knows
up front how many there are and what the last one is: what
:meth:`ov2vss.predictor.VideoPredictor.reset` needs to give every frame the random frame the
inference mapper would give it (README "Segment your own video"). Errors name the file or frame:
FileNotFoundError for missing input, ValueError for undecodable input and
:class:`~ov2vss.data.io.FrameSizeError` (a ValueError) for a frame of another size.

Outputs (:class:`VideoWriter`, :class:`PngFolderWriter`, :func:`write_json`) test their path
when they are created, before any frame is segmented (:func:`check_writable_file`,
:func:`check_writable_folder`), and a write that fails later raises :class:`OutputError`
naming the file; what was written before stays (a video is closed as cleanly as the error
allows, PNGs are written whole or not at all).
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from fractions import Fraction
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from .checkpoint import atomic_write
from .data.io import FrameSizeError, check_same_size, read_frame

__all__ = [
    "FrameSource",
    "VideoFileSource",
    "FrameFolderSource",
    "VideoWriter",
    "PngFolderWriter",
    "OutputError",
    "check_writable_file",
    "check_writable_folder",
    "write_json",
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm")
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
        sizes = [self._header_size(p) for p in paths]  # (H, W)
        for path, size in zip(paths, sizes):
            check_same_size(size, path, sizes[0], paths[0])
        names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
        if len(set(names)) != len(names):  # frames from several folders: number them instead
            names = [f"{i:06d}" for i in range(len(paths))]
        last = read_frame(paths[-1], "RGB")
        super().__init__(", ".join(inputs), len(paths), last, Fraction(fps), names)

    @staticmethod
    def _header_size(path: str) -> Tuple[int, int]:
        try:
            with Image.open(path) as img:
                return img.size[1], img.size[0]
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read frame {path}: {e}") from e

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            yield read_frame(path, "RGB")


# ---------------------------------------------------------------------------- outputs
class OutputError(OSError):
    """An output cannot be created or written; the message names the path."""


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _make_folder(folder: str, what: str) -> None:
    """Create ``folder`` and its parents; an error names ``what`` needs it and why not."""
    if os.path.isdir(folder):
        return
    ancestor = folder
    while not os.path.lexists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if os.path.lexists(ancestor) and not os.path.isdir(ancestor):
        raise OutputError(f"cannot write {what}: {ancestor} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OutputError(
            f"cannot write {what}: cannot create the folder {folder} ({_reason(e)})"
        ) from e


def _probe_folder(folder: str, what: str) -> None:
    """Create and remove a temporary file in ``folder`` (what an atomic write needs)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".ov2vss-write-test.", dir=folder)
    except OSError as e:
        raise OutputError(
            f"cannot write {what}: cannot create files in {folder} ({_reason(e)})"
        ) from e
    os.close(fd)
    os.remove(probe)


def check_writable_file(path: str, what: str = "the output file", atomic: bool = False) -> None:
    """Create the folders above ``path`` and check that ``path`` can be written, without
    changing an existing file; ``atomic``: check instead that its folder takes new files (a
    temporary file replaces ``path`` at the end).

    Raises:
        OutputError: naming ``path`` and the reason (a parent that is a file, a folder that
            cannot be created, no permission, ...).
    """
    label = f"{what} {path}"
    if os.path.isdir(path):
        raise OutputError(f"cannot write {label}: it is a folder")
    folder = os.path.dirname(os.path.abspath(path))
    _make_folder(folder, label)
    if atomic:
        _probe_folder(folder, label)
        return
    existed = os.path.lexists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        raise OutputError(f"cannot write {label}: {_reason(e)}") from e
    if not existed:
        os.remove(path)


def check_writable_folder(folder: str, what: str = "the output folder") -> None:
    """Create ``folder`` (and its parents) and check that files can be created in it.

    Raises:
        OutputError: naming ``folder`` and the reason.
    """
    label = f"{what} {folder}"
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise OutputError(f"cannot write {label}: it is a file, not a folder")
    _make_folder(folder, label)
    _probe_folder(folder, label)


def write_json(path: str, data: Any, what: str = "the JSON file") -> None:
    """Write ``data`` as indented JSON, atomically (a reader never sees half a file).

    Raises:
        OutputError: naming ``path``.
    """
    try:
        with atomic_write(path, "w") as f:
            json.dump(data, f, indent=2)
    except OSError as e:
        raise OutputError(f"cannot write {what} {path}: {_reason(e)}") from e


class PngFolderWriter:
    """Write RGB frames as ``<folder>/<name>.png``, each atomically (whole or not at all).

    The folder is created and tested on construction. A write that fails raises
    :class:`OutputError` naming the file; the PNGs written before it stay.

    Attributes:
        frames_written: PNGs written so far.
    """

    def __init__(self, folder: str):
        check_writable_folder(folder, "the PNG folder")
        self.folder = folder
        self.frames_written = 0

    def path_of(self, name: str) -> str:
        """The file a frame called ``name`` goes to."""
        return os.path.join(self.folder, name + ".png")

    def write(self, frame: np.ndarray, name: Optional[str] = None) -> None:
        """Write one RGB uint8 HxWx3 frame as ``<name>.png`` (default: its number)."""
        path = self.path_of(name if name is not None else f"{self.frames_written:06d}")
        try:
            with atomic_write(path) as f:
                Image.fromarray(np.ascontiguousarray(frame)).save(f, format="PNG")
        except OSError as e:
            raise OutputError(
                f"cannot write {path} ({_reason(e)}); the {self.frames_written} PNGs written "
                f"before it stay in {self.folder}"
            ) from e
        self.frames_written += 1

    def close(self) -> None:
        """Nothing to flush (every PNG is complete when written)."""

    def __enter__(self) -> "PngFolderWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class VideoWriter:
    """Write RGB frames as an H.264 (or MPEG-4) video through PyAV.

    Odd sizes are padded to even ones (yuv420p needs them). Call :meth:`close` at the end.
    The path is tested on construction (PyAV itself opens the file only when the first
    encoded data arrives, which may be many frames later).

    Args:
        path: the output file (.mp4, .mkv, ...).
        fps: frame rate.
        width, height: size of the frames that will be written.

    Raises:
        OutputError: ``path`` cannot be written (on construction), or a write fails later
            (disk full, ...); the message names the file.
        RuntimeError: PyAV has none of the encoders libx264, h264, mpeg4.

    Attributes:
        frames_written: frames passed to the encoder so far.
    """

    def __init__(self, path: str, fps: Fraction, width: int, height: int):
        import av

        check_writable_file(path, "the output video")
        self.path = path
        self.frames_written = 0
        self._failed = False
        self._closed = False
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
            self._closed = True
            raise RuntimeError(
                f"no H.264/MPEG-4 encoder available in PyAV to write {path}; use a folder for PNGs"
            )
        self.stream.width = width + width % 2
        self.stream.height = height + height % 2
        self.stream.pix_fmt = "yuv420p"

    def _error(self, e: OSError, when: str) -> OutputError:
        self._failed = True
        return OutputError(
            f"writing the output video {self.path} failed {when} after {self.frames_written} "
            f"frames ({_reason(e)}); the file is incomplete"
        )

    def write(self, frame: np.ndarray, name: Optional[str] = None) -> None:
        """Append one RGB uint8 HxWx3 frame of the size given to the constructor (``name``
        is not used: frames of a video are numbered by their position)."""
        import av

        if self._failed or self._closed:
            raise OutputError(f"the output video {self.path} is closed or failed before")
        h, w = frame.shape[:2]
        if (w, h) != (self.stream.width, self.stream.height):
            frame = np.pad(frame, ((0, self.stream.height - h), (0, self.stream.width - w), (0, 0)))
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        try:
            for packet in self.stream.encode(video_frame):
                self.container.mux(packet)
        except OSError as e:  # PyAV's errors from writing are OSErrors (av.error.OSError, ...)
            raise self._error(e, "while writing") from e
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and close the file (a second call does nothing). After a failed
        :meth:`write` the file is only closed (that error was raised already)."""
        if self._closed:
            return
        self._closed = True
        error: Optional[OSError] = None
        if not self._failed:
            try:
                for packet in self.stream.encode():
                    self.container.mux(packet)
            except OSError as e:
                error = e
        try:
            self.container.close()
        except OSError as e:
            error = error or e
        if error is not None and not self._failed:
            raise self._error(error, "when closing it")

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
