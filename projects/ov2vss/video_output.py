"""Writing the demo's outputs: a video, a folder of PNGs, a JSON file.

Every output tests its path when it is created, before any frame is segmented
(:func:`check_writable_file`, :func:`check_writable_folder`), and a write that fails later
raises :class:`OutputError` naming the file; what was written before stays (a video is closed
as cleanly as the error allows, PNGs and JSON files are written whole or not at all).
"""

from __future__ import annotations

import json
import os
import tempfile
from fractions import Fraction
from typing import Any, Optional

import numpy as np
from PIL import Image

from .fileio import atomic_write

__all__ = [
    "OutputError",
    "check_writable_file",
    "check_writable_folder",
    "write_json",
    "PngFolderWriter",
    "VideoWriter",
    "VIDEO_EXTENSIONS",
]

# what a video output may be called; any other output path is a folder for PNGs
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm")


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
            # not fileio.write_png: it would re-create a folder removed mid-run, not report it
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
