"""Checkpoint files of OV2VSS: safe loading, clear errors, atomic writes.

* Loading never unpickles arbitrary objects: ``torch.load`` runs with ``weights_only=True``
  (numpy arrays and scalars, as in older detectron2 checkpoints, are allowed for that one
  call only), and detectron2 / Caffe2 ``.pkl`` weight files go through an unpickler that
  accepts nothing but numpy arrays, numpy scalars and plain containers.
* A missing, truncated or corrupt file raises :class:`CheckpointError` naming the file.
* Saving writes a temporary file in the same directory and moves it into place with
  ``os.replace``; a crash mid-save leaves the previous checkpoint (and the
  ``last_checkpoint`` pointer to it) untouched, and the next run removes the stale temporary
  file. Files get the permissions of the umask, like every other output.
* Where the model must be complete (evaluation, ``--resume``, the demo), loading is strict: a
  checkpoint whose tensors do not match the model is refused with one error that names the
  file, the first differing tensors, and the config keys the checkpoint was trained with.
  Initialising training from a backbone file (ImageNet ``.pkl``, SAM) loads the backbone only,
  and a backbone tensor the file lacks is an error.
* Checkpoints also hold the model's training vocabulary (``train_class_texts``, beside the
  tensors, not in the state dict), restored on load for calibrated stacking
  (``MODEL.OV2VSS.SEEN_BIAS``); checkpoints written without it still load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import tempfile
import zipfile
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from .errors import SetupError

__all__ = [
    "CheckpointError",
    "MissingWeightsError",
    "require_weights_file",
    "OV2VSSCheckpointer",
    "atomic_write",
    "atomic_torch_save",
    "load_checkpoint_file",
    "load_model_weights",
    "load_pickle_weights",
    "remove_stale_temp_files",
]

logger = logging.getLogger(__name__)


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# what atomic_write leaves behind when a process dies mid-save: ".<name>.<random>.tmp"
_TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temp_files(directory: str) -> List[str]:
    """Delete the temporary files of saves that were interrupted (e.g. by SIGKILL) in
    ``directory``; call it only while no other process writes there. Returns their paths."""
    removed = []
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
        raise CheckpointError(
            f"checkpoint file {path} is corrupt or not a PyTorch checkpoint"
        ) from e
    except (OSError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"checkpoint file {path} is corrupt or truncated: {e!r}") from e


# ---------------------------------------------------------------------------- checkpointer
class OV2VSSCheckpointer(DetectionCheckpointer):
    """detectron2's :class:`DetectionCheckpointer` with safe loading, clear errors, atomic
    saves and strict loading where the model must be complete (see the module docstring).

    Args:
        model, save_dir, checkpointables: as for ``DetectionCheckpointer``.
        strict: refuse a checkpoint that does not hold exactly the model's tensors. Without
            it, only the backbone's tensors are required (training from a backbone file).
            ``resume_or_load(resume=True)`` is always strict when it finds a checkpoint.
        config: the run's config; saved into checkpoints, and compared with a mismatching
            checkpoint's own config to say which keys differ.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        strict: bool = False,
        config: Optional[Any] = None,
        **checkpointables: Any,
    ):
        super().__init__(model, save_dir, **checkpointables)
        self.strict = strict
        self.config = config
        self._loading: Optional[str] = None  # the file being loaded, for messages
        self._strict_now = strict

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        resuming = resume and self.has_checkpoint()
        self._strict_now = self.strict or resuming
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._strict_now = self.strict

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        # fvcore only asserts; name the file instead (URLs are resolved by detectron2)
        require_weights_file(path)
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _load_model(self, checkpoint: Dict[str, Any]):
        from .modeling.backbone.sam_checkpoint import (
            SAMCheckpointError,
            convert_sam_checkpoint,
            is_sam_checkpoint,
        )

        from_sam = is_sam_checkpoint(checkpoint["model"])
        if from_sam:
            # SAM's own file (sam_vit_b_01ec64.pth): its image encoder, strictly, under the
            # backbone's names; the prompt encoder and mask decoder are not used
            shapes = {k: v.shape for k, v in self.model.state_dict().items()}
            try:
                checkpoint["model"] = convert_sam_checkpoint(
                    checkpoint["model"], "backbone.", shapes
                )
            except SAMCheckpointError as e:
                raise CheckpointError(f"{self._loading}: {e}") from e
            checkpoint.pop("matching_heuristics", None)
            if self._strict_now:
                raise CheckpointError(
                    f"{self._loading} is SAM's image-encoder checkpoint, not a trained OV2VSS model: "
                    "it initialises the backbone for training; evaluation and the demo need a "
                    "checkpoint written by train_net.py"
                )
        if self._strict_now and not checkpoint.get("matching_heuristics", False):
            # before loading anything: a partly loaded model must not be used
            self._check_complete(checkpoint)
        saved_config = checkpoint.get("config")
        incompatible = super()._load_model(checkpoint)
        problems = _Mismatch(
            list(incompatible.missing_keys),
            list(incompatible.unexpected_keys),
            [(k, tuple(a), tuple(b)) for k, a, b in incompatible.incorrect_shapes],
        )
        if self._strict_now:
            if problems:
                raise CheckpointError(self._mismatch_message(problems, saved_config))
        elif not from_sam:  # (SAM's encoder was checked by its converter; the pyramid is new)
            backbone = _Mismatch(
                [k for k in problems.missing if k.startswith("backbone.")],
                [],
                [x for x in problems.shapes if x[0].startswith("backbone.")],
            )
            if backbone:
                raise CheckpointError(
                    f"{self._loading}: the backbone needs tensors this file does not have; "
                    + backbone.describe()
                )
            fresh = sorted({k.split(".")[0] for k in problems.missing})
            if fresh:
                self.logger.info(
                    f"{self._loading} initialised the backbone; not in the file, so left as "
                    f"built: {', '.join(fresh)} ({len(problems.missing)} tensors)"
                )
        self._restore_training_vocabulary(checkpoint.get("train_class_texts"))
        return incompatible

    def _restore_training_vocabulary(self, saved: Optional[Sequence[str]]) -> None:
        """The vocabulary the checkpoint's weights were trained on (saved by :meth:`save`;
        older checkpoints have none): it tells calibrated stacking (MODEL.OV2VSS.SEEN_BIAS)
        which classes are seen. A model built without one (the demo: DATASETS.TRAIN empty)
        takes it; one built with another keeps its own, which its training labels index."""
        if saved is None or not hasattr(self.model, "train_class_texts"):
            return
        saved = [str(t) for t in saved]
        current = list(self.model.train_class_texts)
        if not current:
            self.model.train_class_texts = saved
        elif current != saved:
            self.logger.warning(
                f"{self._loading} was trained on a vocabulary of {len(saved)} classes, the "
                f"config's DATASETS.TRAIN has another ({len(current)} classes): the config's is "
                "kept as the training vocabulary (and the seen classes of MODEL.OV2VSS.SEEN_BIAS)"
            )

    def _check_complete(self, checkpoint: Dict[str, Any]) -> None:
        theirs = {_strip_module(k): v for k, v in checkpoint["model"].items()}
        ours = self.model.state_dict()
        problems = _Mismatch(
            sorted(set(ours) - set(theirs)),
            sorted(set(theirs) - set(ours)),
            [
                (k, tuple(theirs[k].shape), tuple(ours[k].shape))
                for k in ours
                if k in theirs and tuple(getattr(theirs[k], "shape", ())) != tuple(ours[k].shape)
            ],
        )
        if problems:
            raise CheckpointError(self._mismatch_message(problems, checkpoint.get("config")))

    def _mismatch_message(self, problems: "_Mismatch", saved_config: Optional[str]) -> str:
        msg = f"checkpoint file {self._loading} does not match the model: " + problems.describe()
        return msg + ". " + self._config_hint(saved_config)

    def _config_hint(self, saved_config: Optional[str]) -> str:
        """Which config the checkpoint was probably trained with, and how it differs."""
        source = "the config saved in it"
        if not saved_config and self._loading and "://" not in self._loading:
            beside = os.path.join(os.path.dirname(os.path.abspath(self._loading)), "config.yaml")
            if os.path.isfile(beside):
                with open(beside, encoding="utf-8") as f:
                    saved_config, source = f.read(), beside
        if not saved_config:
            return (
                "It was trained with another config (no config.yaml beside it to compare): "
                "use the config of the run that wrote it"
            )
        if self.config is None:
            return f"It was probably trained with {source}"
        diffs = config_differences(saved_config, self.config)
        if not diffs:
            return f"It was probably trained with {source} (its MODEL keys equal this config's)"
        shown = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, a, b in diffs[:8])
        more = f" (+{len(diffs) - 8} more)" if len(diffs) > 8 else ""
        return f"It was probably trained with {source}, which differs in {shown}{more}"

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if not filename.endswith(".pkl"):
            return super()._load_file(filename)  # torch files come back through _torch_load
        data = load_pickle_weights(filename)
        if not isinstance(data, dict):
            raise CheckpointError(
                f"{filename}: expected a dict of weights, got {type(data).__name__}"
            )
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
        if self.config is not None:
            data["config"] = self.config.dump()  # to explain a later mismatch
        vocabulary = getattr(self.model, "train_class_texts", None)
        if vocabulary is not None:  # for calibration at inference (_restore_training_vocabulary)
            data["train_class_texts"] = list(vocabulary)
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


def _strip_module(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


class _Mismatch:
    """Tensors a checkpoint lacks, has in excess, or has with another shape."""

    def __init__(
        self,
        missing: Sequence[str],
        unexpected: Sequence[str],
        shapes: Sequence[Tuple[str, Tuple[int, ...], Tuple[int, ...]]],
    ):
        self.missing, self.unexpected, self.shapes = list(missing), list(unexpected), list(shapes)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def describe(self, first: int = 3) -> str:
        count = len(self.missing) + len(self.unexpected) + len(self.shapes)
        parts = []
        if self.shapes:
            shown = ", ".join(
                f"{k} {list(a)} in the file vs {list(b)} in the model"
                for k, a, b in self.shapes[:first]
            )
            parts.append(f"{len(self.shapes)} with another shape (e.g. {shown})")
        if self.missing:
            parts.append(
                f"{len(self.missing)} missing from the file (e.g. {', '.join(self.missing[:first])})"
            )
        if self.unexpected:
            parts.append(
                f"{len(self.unexpected)} not in the model (e.g. {', '.join(self.unexpected[:first])})"
            )
        return f"{count} tensors differ: " + "; ".join(parts)


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def config_differences(saved_yaml: str, config: Any) -> List[Tuple[str, Any, Any]]:
    """MODEL.* keys (the architecture) whose values differ between a saved config (yaml
    text) and ``config``: ``[(key, saved value, this value)]`` (weights and device left out)."""
    try:
        saved = _flatten(yaml.safe_load(saved_yaml) or {})
    except yaml.YAMLError:
        return []
    current = _flatten(yaml.safe_load(config.dump()))
    skip = {"MODEL.WEIGHTS", "MODEL.DEVICE", "MODEL.CLIP.PRETRAINED"}
    diffs = []
    for key in sorted(set(saved) & set(current)):
        if not key.startswith("MODEL.") or key in skip:
            continue
        a, b = saved[key], current[key]
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            diffs.append((key, saved[key], current[key]))
    return diffs


def load_model_weights(model: nn.Module, cfg: Any) -> Optional[str]:
    """Load ``cfg.MODEL.WEIGHTS`` into a model used for inference (demo, VideoPredictor).

    The checkpoint must hold exactly the model's tensors (a trained OV2VSS checkpoint of this
    config); anything else is refused with :class:`CheckpointError` (a missing file:
    :class:`MissingWeightsError`, also a ``FileNotFoundError``). Returns a warning (also
    logged) when MODEL.WEIGHTS is empty: the model is then randomly initialised.
    """
    path = cfg.MODEL.WEIGHTS
    if path:
        OV2VSSCheckpointer(model, strict=True, config=cfg).load(path)
        return None
    clip = cfg.MODEL.CLIP.PRETRAINED
    what = (
        f"only CLIP is pretrained (MODEL.CLIP.PRETRAINED={clip!r}); the backbone, STCF, RFE, "
        "video text encoding and the head"
        if clip
        else "the whole model, CLIP included (MODEL.CLIP.PRETRAINED is empty too),"
    )
    msg = (
        f"MODEL.WEIGHTS is empty: {what} are randomly initialised, so the predictions are "
        "meaningless. Pass a trained checkpoint with MODEL.WEIGHTS <file.pth>."
    )
    logger.warning(msg)
    return msg
