"""Small file helpers shared by every writer and reader of the project.

* :func:`atomic_write`: a file is replaced whole or not at all (a temporary file in the same
  folder, fsync'ed, then ``os.replace``), with the permissions of the umask like any other
  output; :func:`remove_stale_temp_files` deletes what a killed process left behind.
* :func:`write_png`: a label map or frame written that way.
* :func:`read_image_size`: an image's (height, width) from its header, nothing decoded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from typing import IO, Iterator, List, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "atomic_write",
    "new_file_mode",
    "read_image_size",
    "remove_stale_temp_files",
    "write_png",
]

logger = logging.getLogger(__name__)

# what atomic_write leaves behind when a process dies mid-write: ".<name>.<8 random>.tmp"
_TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` atomically.

    The data is flushed and fsync'ed before ``os.replace``, so after a crash ``path`` holds
    either the old or the new content, never a partial file. On error the temporary file is
    removed and ``path`` is left as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600; outputs follow the umask
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    # makes the rename itself durable; not possible on every OS / file system
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temp_files(directory: str) -> List[str]:
    """Delete the temporary files of writes that were interrupted (e.g. by SIGKILL) in
    ``directory``; call it only while no other process writes there. Returns their paths."""
    removed: List[str] = []
    if not os.path.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if _TEMP_FILE.match(name) and os.path.isfile(path):
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(path)
    if removed:
        logger.info(f"removed {len(removed)} temporary file(s) of interrupted saves: {removed}")
    return removed


def write_png(path: str, array: np.ndarray) -> None:
    """Write a uint8 array (HxW labels or HxWx3 RGB) as a PNG, atomically; creates the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(f, format="PNG")


def read_image_size(path: str) -> Tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels.

    Raises:
        OSError: naming ``path`` (missing, unreadable or not an image).
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, ValueError, SyntaxError) as e:  # PIL reports corrupt data with these
        raise OSError(f"cannot read the image header of {path}: {e}") from e
    return height, width
