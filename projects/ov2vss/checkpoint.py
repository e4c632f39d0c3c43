"""The OV2VSS checkpointer: which checkpoints a model accepts, and what checkpoints hold.

* Where the model must be complete (evaluation, ``--resume``, the demo, ``VideoPredictor``),
  loading is strict: a checkpoint whose stored config differs from the run's on an
  architecture key (:mod:`ov2vss.checkpoint_config`), or whose tensors do not match the
  model, is refused with one error that names the file, each differing key with both values
  and the first differing tensors — before any tensor is loaded, for ``.pth`` and ``.pkl``
  files alike. A checkpoint without a stored config is checked on its tensors alone, with a
  warning. Initialising training from a backbone file (ImageNet ``.pkl``, SAM) loads the
  backbone only, and a backbone tensor the file lacks is an error.
* Checkpoints also hold the run's config and the model's training vocabulary
  (``train_class_texts``, beside the tensors, not in the state dict), restored on load for
  calibrated stacking (``MODEL.OV2VSS.SEEN_BIAS``); checkpoints written without it still load.
* Files are read without executing pickled code and written atomically
  (:mod:`ov2vss.checkpoint_io`); docs/GETTING_STARTED.md, "Checkpoints from elsewhere, safe
  and strict loading".
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from torch import nn

from .checkpoint_config import architecture_differences, config_hint, describe_differences
from .checkpoint_io import (
    CheckpointError,
    atomic_torch_save,
    load_checkpoint_file,
    load_pickle_weights,
    require_weights_file,
)
from .fileio import atomic_write

__all__ = ["OV2VSSCheckpointer", "load_model_weights"]

logger = logging.getLogger(__name__)


class OV2VSSCheckpointer(DetectionCheckpointer):
    """detectron2's :class:`DetectionCheckpointer` with safe loading, clear errors, atomic
    saves and strict loading where the model must be complete (see the module docstring).

    Args:
        model, save_dir, checkpointables: as for ``DetectionCheckpointer``.
        strict: refuse a checkpoint that does not hold exactly the model's tensors. Without
            it, only the backbone's tensors are required (training from a backbone file).
            ``resume_or_load(resume=True)`` is always strict when it finds a checkpoint.
        config: the run's config; saved into checkpoints, and compared on strict loads with
            the checkpoint's own config on every architecture key.
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
        if self._strict_now:
            if checkpoint.get("matching_heuristics", False):
                # detectron2 renames a .pkl's tensors while loading them: rename them here
                # instead, so that the check below sees what would be loaded
                self._align_names(checkpoint)
            # before loading anything: a refused checkpoint leaves the model as it was
            self._check_before_loading(checkpoint)
        saved_config = checkpoint.get("config")
        incompatible = super()._load_model(checkpoint)
        problems = _Mismatch(
            list(incompatible.missing_keys),
            list(incompatible.unexpected_keys),
            [(k, tuple(a), tuple(b)) for k, a, b in incompatible.incorrect_shapes],
        )
        if self._strict_now:
            if problems:  # (_check_before_loading found none: not expected)
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

    def _align_names(self, checkpoint: Dict[str, Any]) -> None:
        """Map a detectron2 / Caffe2 file's tensor names onto the model's, as
        ``DetectionCheckpointer`` does while loading (its name-matching heuristics)."""
        self._convert_ndarray_to_tensor(checkpoint["model"])
        checkpoint["model"] = align_and_update_state_dicts(
            self.model.state_dict(),
            checkpoint["model"],
            c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
        )
        checkpoint["matching_heuristics"] = False  # done

    def _architecture_differences(self, checkpoint: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
        """The architecture keys (:mod:`ov2vss.checkpoint_config`) on which the checkpoint's
        stored config differs from the run's; none when either config is unknown (a
        checkpoint without one is loaded on its tensors alone, with a warning)."""
        if self.config is None:
            return []
        saved = checkpoint.get("config")
        if not saved:
            self.logger.warning(
                f"{self._loading} stores no config: only its tensors are checked, not the "
                "architecture keys that change no tensor shape (docs/GETTING_STARTED.md, "
                '"Checkpoints from elsewhere, safe and strict loading")'
            )
            return []
        try:
            diffs, absent = architecture_differences(saved, self.config)
        except ValueError as e:
            raise CheckpointError(f"checkpoint file {self._loading}: {e}") from e
        if absent:
            self.logger.warning(
                f"{self._loading}'s stored config predates the architecture keys "
                f"{', '.join(absent)}: not compared"
            )
        return diffs

    def _check_before_loading(self, checkpoint: Dict[str, Any]) -> None:
        """Refuse, before anything is loaded, a checkpoint trained with other architecture
        keys or whose tensors are not exactly the model's: one error naming all of them."""
        diffs = self._architecture_differences(checkpoint)
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
        if diffs:
            tensors = f"; and {problems.describe()}" if problems else ""
            raise CheckpointError(
                f"checkpoint file {self._loading} does not match the model: it was trained with "
                f"other architecture keys ({describe_differences(diffs)}){tensors}. Evaluate it "
                "with the config it was trained with (docs/GETTING_STARTED.md, 'Checkpoints "
                "from elsewhere, safe and strict loading')"
            )
        if problems:
            raise CheckpointError(self._mismatch_message(problems, checkpoint.get("config")))

    def _mismatch_message(self, problems: "_Mismatch", saved_config: Optional[str]) -> str:
        msg = f"checkpoint file {self._loading} does not match the model: " + problems.describe()
        return msg + ". " + config_hint(saved_config, self._loading, self.config)

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
            data["config"] = self.config.dump()  # compared on load (checkpoint_config)
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
