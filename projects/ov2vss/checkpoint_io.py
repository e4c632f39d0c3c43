"""Checkpoint files on disk: safe reading, clear errors, atomic writes.

* Reading never unpickles arbitrary objects: ``torch.load`` runs with ``weights_only=True``
  (numpy arrays and scalars, as in older detectron2 checkpoints, are allowed for that one
  call only), and detectron2 / Caffe2 ``.pkl`` weight files go through an unpickler that
  accepts nothing but numpy arrays, numpy scalars and plain containers.
* A missing, truncated or corrupt file raises :class:`CheckpointError` naming the file.
* :func:`atomic_torch_save` never leaves a partially written file behind
  (:func:`ov2vss.fileio.atomic_write`).

How checkpoints are matched to a model is :mod:`ov2vss.checkpoint`'s part.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any, List

import numpy as np
import torch

from .errors import SetupError
from .fileio import atomic_write

__all__ = [
    "CheckpointError",
    "MissingWeightsError",
    "atomic_torch_save",
    "load_checkpoint_file",
    "load_pickle_weights",
    "require_weights_file",
]


class CheckpointError(SetupError):
    """A checkpoint that cannot be read (missing, corrupt, truncated or unsafe); names the file."""


class MissingWeightsError(CheckpointError, FileNotFoundError):
    """MODEL.WEIGHTS names a file that does not exist."""


def require_weights_file(path: str) -> None:
    """The one existence check of MODEL.WEIGHTS: a local file must exist (URLs such as
    ``detectron2://`` or ``https://`` are resolved by detectron2's path manager)."""
    if path and "://" not in path and not os.path.isfile(path):
        raise MissingWeightsError(f"MODEL.WEIGHTS: checkpoint file {path} does not exist")


# ---------------------------------------------------------------------------- writing
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
        raise CheckpointError(
            f"checkpoint file {path} is corrupt or not a PyTorch checkpoint"
        ) from e
    except (OSError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {e!r}") from e
