"""Checkpoint files of OV2VSS: safe loading, clear errors, atomic writes.

* Loading never unpickles arbitrary objects: ``torch.load`` runs with ``weights_only=True``
  (numpy arrays and scalars, as in older detectron2 checkpoints, are allowed for that one
  call only), and detectron2 / Caffe2 ``.pkl`` weight files go through an unpickler that
  accepts nothing but numpy arrays, numpy scalars and plain containers.
* A missing, truncated or corrupt file raises :class:`CheckpointError` naming the file.
* Saving writes a temporary file in the same directory and moves it into place with
  ``os.replace``; a crash mid-save leaves the previous checkpoint (and the
  ``last_checkpoint`` pointer to it) untouched.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import tempfile
import zipfile
from typing import IO, Any, Dict, Iterator, List

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = [
    "CheckpointError",
    "OV2VSSCheckpointer",
    "atomic_write",
    "atomic_torch_save",
    "load_checkpoint_file",
    "load_pickle_weights",
]

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read (missing, corrupt, truncated or unsafe); names the file."""


# ---------------------------------------------------------------------------- writing
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


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves a partially written ``path`` behind."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


# ---------------------------------------------------------------------------- reading
def _numpy_globals() -> List[Any]:
    """What pickled numpy arrays / scalars reference: reconstruct functions, dtypes."""
    from numpy.core import multiarray

    allowed = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes by their class
    if dtypes is not None:
        allowed += [
            getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n != "ObjectDType"
        ]
    return allowed


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickler for ``.pkl`` weight files: numpy arrays, numpy scalars and builtin
    containers only; any other global (a class, a function such as ``os.system``) is refused."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # protocol-2 pickles store bytes through it
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),  # files written by numpy 2
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            module = module.replace("numpy._core", "numpy.core")
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")


def _check_exists(path: str) -> None:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path} does not exist")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint file {path} is empty (an interrupted copy or save?)")


def load_pickle_weights(path: str) -> Any:
    """Read a detectron2 / Caffe2 ``.pkl`` weight file without executing pickled code."""
    _check_exists(path)
    with open(path, "rb") as f:
        try:
            # latin1: Caffe2 / Detectron1 files were written by Python 2
            return _WeightsUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            if "refusing" in str(e):
                raise CheckpointError(
                    f"{path} contains Python objects other than numpy arrays and plain containers "
                    f"({e}); such files are not loaded because unpickling them can run code"
                ) from e
            raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {e}") from e
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as e:
            raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {e!r}") from e


def load_checkpoint_file(path: str) -> Any:
    """Load a checkpoint (``.pth``/``.pt``/``.bin``; ``.pkl`` via :func:`load_pickle_weights`)
    on the CPU with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupt, or holds objects
            that ``weights_only`` loading refuses (the message says which).
    """
    if path.endswith(".pkl"):
        return load_pickle_weights(path)
    _check_exists(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses unknown globals; in a readable archive that is the content,
        # otherwise the bytes are simply not a checkpoint
        if zipfile.is_zipfile(path) and "Unsupported global" in str(e):
            found = re.search(r"GLOBAL (\S+)", str(e))
            detail = f" (e.g. {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path} contains Python objects other than tensors and plain containers{detail}; "
                "it is not loaded because unpickling them can run code. Re-save "
                "the weights as a plain dict of tensors, e.g. torch.save(model.state_dict(), f)"
            ) from e
        raise CheckpointError(f"checkpoint file {path} is corrupt or not a PyTorch checkpoint") from e
    except (OSError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {e!r}") from e


# ---------------------------------------------------------------------------- checkpointer
class OV2VSSCheckpointer(DetectionCheckpointer):
    """detectron2's :class:`DetectionCheckpointer` with safe loading, clear errors and atomic
    saves (see the module docstring). Drop-in: same constructor and methods."""

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        # fvcore only asserts; name the file instead (URLs are resolved by detectron2)
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(f"checkpoint file {path} does not exist")
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if not filename.endswith(".pkl"):
            return super()._load_file(filename)  # torch files come back through _torch_load
        data = load_pickle_weights(filename)
        if not isinstance(data, dict):
            raise CheckpointError(f"{filename}: expected a dict of weights, got {type(data).__name__}")
        if "model" in data and "__author__" in data:  # detectron2 model-zoo / converted backbones
            return data
        # Caffe2 / Detectron1 model zoo: weights under "blobs" (detection) or at the top level
        blobs = data.get("blobs", data)
        blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
        return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}

    def _torch_load(self, f: str) -> Dict[str, Any]:
        return load_checkpoint_file(f)

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

