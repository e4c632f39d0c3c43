"""Video semantic segmentation evaluator: per-frame IoU/accuracy metrics, the seen/unseen
split of the open-vocabulary protocol, the seen-bias sweep and VSPW's video consistency.

A sibling of detectron2's :class:`~detectron2.evaluation.SemSegEvaluator` with the same
``reset/process/evaluate`` interface; docs/METRICS.md defines every metric. The metrics come
from :mod:`.metrics`, the sweep from :mod:`.seen_bias`, mVC from :mod:`.video_consistency`;
this module reads each frame's ground truth (:mod:`.ground_truth`), accumulates, gathers the
processes' states and writes ``metrics.json``. The PNG report beside it is the caller's
(:func:`ov2vss.evaluation.report.write_evaluation_reports`).
"""

import json
import logging
import math
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from ..data.io import check_same_size
from ..modeling.postprocess import check_seen_bias, seen_class_mask
from ..vocabulary import dataset_vocabulary
from .ground_truth import check_label_lut, read_label_map, read_raw_mask
from .metrics import confusion_matrix, json_safe, segmentation_metrics
from .prediction_dump import PredictionDump, write_predictions
from .seen_bias import SeenBiasSweep
from .video_consistency import (
    FrameKey,
    VideoConsistency,
    check_windows,
    map_dtype,
    mean_scores,
    merge_videos,
    video_key,
)

__all__ = ["VideoSemSegEvaluator"]


class VideoSemSegEvaluator(DatasetEvaluator):
    """Evaluate video semantic segmentation outputs ``{"sem_seg": Tensor[C, H, W]}``.

    :meth:`evaluate` returns, under ``results["sem_seg"]`` (percent): ``mIoU``, ``fwIoU``,
    ``mACC``, ``pACC``, ``mIoU-seen`` / ``mIoU-unseen`` for each non-empty class group of the
    metadata (``hIoU`` with both), ``mVC<n>`` for each window of ``vc_windows``, then
    ``IoU-<class>`` and ``ACC-<class>`` (NaN for a class absent from the GT). With both groups
    the seen-bias sweep goes to ``metrics.json`` under ``seen_bias`` and to
    :attr:`sweep_results`. Definitions: docs/METRICS.md.

    The sweep is in absolute gamma and biases the classes calibration biases: tell the
    evaluator the model's ``seen_bias`` and training vocabulary (``train_class_texts``, or
    :meth:`set_calibration`, as ``Trainer.test`` does). Untold, it assumes uncalibrated scores
    (gamma 0) and biases the metadata's ``seen_classes``.

    The ground truth is each record's ``sem_seg_file_name``, a label map in the dataset's
    label space, read exactly as SemSegEvaluator reads it; video consistency compares the raw
    masks (``raw_sem_seg_file_name``, the label map where a record has none), checked against
    the label maps through the metadata's ``label_lut``. A *video* is the records with one
    ``video_id`` and one ``video_frames`` list, its frames ordered by ``frame_index``. Frames
    may arrive in any order, in any batches, spread over processes, for the same numbers;
    evaluating the same frame twice raises ``ValueError`` naming both files (a sampler bug).
    Fed video by video in order (streaming evaluation), at most ``max(vc_windows)`` frames are
    held (:attr:`frames_held`). Under DDP, :meth:`evaluate` gathers the state on the main
    process, which computes the metrics; the other processes return None.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        vc_windows: Sequence[int] = (8, 16),
        dump_predictions: bool = False,
        seen_bias: float = 0.0,
        train_class_texts: Optional[Sequence[str]] = None,
    ):
        """
        Args:
            dataset_name: a registered dataset following the project's conventions (records
                with ``file_name``/``sem_seg_file_name`` (label map)/``video_id``/
                ``frame_index``, optionally ``raw_sem_seg_file_name``; metadata with
                ``stuff_classes``, ``seen_classes``/``unseen_classes``, optionally
                ``label_lut``).
            distributed: gather results from all processes and compute on the main one.
            output_dir: where ``metrics.json`` (and, with ``dump_predictions``,
                ``sem_seg_predictions.json``) is written; None writes nothing.
            vc_windows: window lengths n of the video-consistency metrics ``mVC<n>``.
            dump_predictions: also write detectron2-style per-frame RLE predictions
                (large on VSPW; off by default).
            seen_bias, train_class_texts: see :meth:`set_calibration`.
        """
        self._logger = logging.getLogger(__name__)
        self.dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._vc_windows = check_windows(vc_windows)
        self._dump_predictions = bool(dump_predictions)

        meta = MetadataCatalog.get(dataset_name)
        self.class_names: List[str] = list(meta.stuff_classes)
        self._num_classes = len(self.class_names)
        duplicated = sorted({c for c in self.class_names if self.class_names.count(c) > 1})
        if duplicated:
            raise ValueError(
                f"dataset '{dataset_name}' has duplicated class names {duplicated}; "
                "per-class metric keys would collide"
            )
        self._ignore_label = int(meta.get("ignore_label", 255))
        # raw value -> label id; only used to validate raw masks against their label maps
        self._label_lut = check_label_lut(meta.get("label_lut", None), dataset_name)
        self.seen_classes = _class_group(meta, "seen_classes", self._num_classes, dataset_name)
        self.unseen_classes = _class_group(meta, "unseen_classes", self._num_classes, dataset_name)
        self._dataset_id_of = None
        if meta.get("stuff_dataset_id_to_contiguous_id", None):
            self._dataset_id_of = {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}

        self._records: Dict[str, Dict[str, Any]] = {
            r["file_name"]: r for r in DatasetCatalog.get(dataset_name)
        }
        self._map_dtype = map_dtype(self._num_classes, self._ignore_label)
        self._cpu_device = torch.device("cpu")
        self._clear_outputs()
        self.set_calibration(seen_bias, train_class_texts)  # (resets)

    def set_calibration(
        self, seen_bias: float = 0.0, train_class_texts: Optional[Sequence[str]] = None
    ) -> None:
        """What the model's calibration did to the scores, for the seen-bias sweep: it
        subtracted ``seen_bias`` (MODEL.OV2VSS.SEEN_BIAS) from the classes whose text is in
        ``train_class_texts`` (the model's training vocabulary, compared as
        :func:`~ov2vss.modeling.postprocess.seen_class_mask` compares them). None: the
        metadata's ``seen_classes`` are the biased ones. Resets the evaluator."""
        self.seen_bias = check_seen_bias(seen_bias)
        if train_class_texts is None:
            self.biased_classes = list(self.seen_classes)
        else:
            mask = seen_class_mask(dataset_vocabulary(self.dataset_name), train_class_texts)
            self.biased_classes = [i for i, seen in enumerate(mask) if seen]
            if self.seen_classes and self.unseen_classes and not 0 < sum(mask) < len(mask):
                self._logger.info(
                    f"no seen-bias sweep on '{self.dataset_name}': {sum(mask)} of its "
                    f"{len(mask)} classes are in the model's training vocabulary, so "
                    "calibration cannot change its labels"
                )
        self.reset()

    def _clear_outputs(self) -> None:
        # what evaluate() wrote and computed on the main process, for the caller's report
        self.metrics_file: Optional[str] = None  # metrics.json
        self.results: Optional["OrderedDict[str, float]"] = None  # results["sem_seg"]
        self.sweep_results: Optional[Dict[str, Any]] = None  # metrics.json's "seen_bias"

    def reset(self) -> None:
        self._conf_matrix = np.zeros((self._num_classes, self._num_classes), dtype=np.int64)
        self._evaluated: Dict[FrameKey, str] = {}  # every frame processed -> its file
        self._vc = (
            VideoConsistency(self._vc_windows, self._records.values(), self._map_dtype)
            if self._vc_windows
            else None
        )
        self._dump = PredictionDump(self._map_dtype) if self._dump_predictions else None
        self._peak_frames_held = 0
        self._sweep = self._new_sweep()

    @property
    def frames_held(self) -> int:
        """Frames whose label maps are held now (video consistency, prediction dump)."""
        return (self._vc.frames_held if self._vc else 0) + (len(self._dump) if self._dump else 0)

    @property
    def peak_frames_held(self) -> int:
        """The most frames held at once since :meth:`reset`: at most ``max(vc_windows)`` when
        every video's frames arrive in order (and no prediction dump)."""
        return self._peak_frames_held

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, torch.Tensor]]) -> None:
        """
        Args:
            inputs: dicts with at least ``file_name`` (a frame of the dataset), ``video_id``
                and ``frame_index`` (taken from the dataset record when absent).
            outputs: dicts with ``sem_seg``: float Tensor[C, H, W] of class scores at the
                original frame resolution.
        """
        if len(inputs) != len(outputs):
            raise ValueError(f"got {len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs):
            file_name = inp["file_name"]
            record = self._records.get(file_name)
            if record is None:
                raise ValueError(f"{file_name} is not a frame of dataset '{self.dataset_name}'")
            gt_file = record.get("sem_seg_file_name")
            if not gt_file:
                raise ValueError(
                    f"{file_name} in dataset '{self.dataset_name}' has no sem_seg_file_name"
                )
            key = self._frame_key(inp, record)
            if key in self._evaluated:
                raise ValueError(_duplicate_message(key, self._evaluated[key], file_name))

            pred = self._prediction(out, file_name)
            gt = read_label_map(gt_file, self._num_classes, self._ignore_label)
            check_same_size(gt, gt_file, pred.shape, f"the prediction for {file_name}", "mask")
            if self._vc is not None:
                vc_file = record.get("raw_sem_seg_file_name") or gt_file
                vc_gt = (
                    gt
                    if vc_file == gt_file
                    else read_raw_mask(vc_file, gt, gt_file, self._label_lut)
                )
                self._vc.add(key, vc_gt, pred, vc_file)

            self._conf_matrix += confusion_matrix(gt, pred, self._num_classes, self._ignore_label)
            if self._sweep is not None:
                self._sweep.process(out["sem_seg"], gt)
            self._evaluated[key] = file_name
            if self._dump is not None:
                self._dump.add(key, file_name, pred)
        self._peak_frames_held = max(self._peak_frames_held, self.frames_held)

    def evaluate(self) -> Optional["OrderedDict[str, Dict[str, float]]"]:
        """Return ``OrderedDict(sem_seg={metric: value in percent})`` on the main process
        (None on the others); write ``metrics.json`` into ``output_dir`` when given. The
        state is left as it is."""
        self._clear_outputs()
        state = {
            "conf_matrix": self._conf_matrix,
            "evaluated": self._evaluated,
            "videos": self._vc.videos if self._vc else {},
            "predictions": self._dump.frames if self._dump else {},
            "seen_bias": self._sweep.state() if self._sweep is not None else None,
        }
        if self._distributed:
            comm.synchronize()
            states = comm.gather(state, dst=0)
            if not comm.is_main_process():
                return None
        else:
            states = [state]
        conf_matrix, evaluated = _merge_frames(states)
        if not evaluated:
            self._logger.warning(
                f"VideoSemSegEvaluator on '{self.dataset_name}' received no predictions."
            )
            return OrderedDict()

        res, per_class = segmentation_metrics(
            conf_matrix, self.class_names, self.seen_classes, self.unseen_classes
        )
        videos = merge_videos(s["videos"] for s in states)
        for n, score in mean_scores(self._vc_windows, videos).items():
            if math.isnan(score):
                self._logger.warning(
                    f"mVC{n} on '{self.dataset_name}' is NaN: no video has a window of {n} "
                    "evaluated frames with consistent ground truth"
                )
            res[f"mVC{n}"] = 100 * score
        summary = res.copy()
        res.update(per_class)
        sweep = self._sweep_results(states)
        self.results, self.sweep_results = res, sweep

        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            written = {"sem_seg": json_safe(res)}
            if sweep is not None:
                written["seen_bias"] = json_safe(sweep)
            self.metrics_file = os.path.join(self._output_dir, "metrics.json")
            with PathManager.open(self.metrics_file, "w") as f:
                # strict JSON: NaN (class absent from the GT, no VC window) becomes null
                json.dump(written, f, indent=2, allow_nan=False)
            if self._dump_predictions:
                write_predictions(
                    os.path.join(self._output_dir, "sem_seg_predictions.json"),
                    (s["predictions"] for s in states),
                    self._map_dtype,
                    self._dataset_id_of,
                )
        sweep_line = ""
        if sweep is not None:
            sweep_line = (
                f"\nseen-bias sweep: AUSUC {sweep['AUSUC']:.2f}, hIoU-best "
                f"{sweep['hIoU-best']:.2f} at seen bias {sweep['seen-bias-best']:g} "
                f"(hIoU {res['hIoU']:.2f} at {self.seen_bias:g}, this evaluation's)"
            )
        self._logger.info(
            f"Video semantic segmentation results on '{self.dataset_name}' "
            f"({len(evaluated)} frames):\n" + create_small_table(summary) + sweep_line
        )
        return OrderedDict(sem_seg=res)

    # ------------------------------------------------------------------ helpers
    def _frame_key(self, inp: Dict[str, Any], record: Dict[str, Any]) -> FrameKey:
        """The frame's key, from its record; an input that names another video or frame
        index than its record is an error."""
        for field in ("video_id", "frame_index"):
            if field in inp and str(inp[field]) != str(record[field]):
                raise ValueError(
                    f"input {inp['file_name']} has {field}={inp[field]!r} but its record in "
                    f"'{self.dataset_name}' has {record[field]!r}"
                )
        return video_key(record) + (int(record["frame_index"]),)

    def _prediction(self, output: Dict[str, torch.Tensor], file_name: str) -> np.ndarray:
        scores = output["sem_seg"]
        if scores.ndim != 3 or scores.shape[0] != self._num_classes:
            raise ValueError(
                f"prediction for {file_name} must be a Tensor[C, H, W] with C = "
                f"{self._num_classes} (classes of '{self.dataset_name}'), "
                f"got shape {tuple(scores.shape)}"
            )
        return scores.argmax(dim=0).to(self._cpu_device).numpy().astype(np.int64)

    def _new_sweep(self) -> Optional[SeenBiasSweep]:
        """The seen-bias sweep, where both class groups are scored and calibration moves
        scores (some classes biased, not all; None otherwise)."""
        if not (self.seen_classes and self.unseen_classes):
            return None
        if not self.biased_classes or len(self.biased_classes) == self._num_classes:
            return None
        return SeenBiasSweep(
            self._num_classes,
            self.seen_classes,
            self.unseen_classes,
            ignore_label=self._ignore_label,
            biased_classes=self.biased_classes,
            applied_bias=self.seen_bias,
        )

    def _sweep_results(self, states: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """The seen-bias sweep of all processes (None without both class groups, or when the
        scores were not probabilities)."""
        merged = self._new_sweep()
        if merged is None:
            return None
        merged.merge(s["seen_bias"] for s in states)
        if merged.invalid is not None:
            self._logger.warning(
                f"no seen-bias sweep on '{self.dataset_name}': {merged.invalid} (the sweep "
                "calibrates log-probabilities, docs/METRICS.md)"
            )
        return merged.results()


def _class_group(meta: Any, field: str, num_classes: int, dataset_name: str) -> List[int]:
    group = [int(c) for c in meta.get(field, None) or []]
    bad = [c for c in group if not 0 <= c < num_classes]
    if bad:
        raise ValueError(
            f"metadata {field} of '{dataset_name}' has class indices outside "
            f"[0, {num_classes}): {bad}"
        )
    return group


def _duplicate_message(key: FrameKey, first: str, second: str) -> str:
    return (
        f"frame {key[2]} of video '{key[0]}' evaluated twice ({first} and {second}); "
        "the test sampler must visit every frame once"
    )


def _merge_frames(states: List[Dict[str, Any]]) -> Tuple[np.ndarray, Dict[FrameKey, str]]:
    """The summed confusion matrix and the evaluated frames of all processes (a frame
    evaluated by two of them is an error)."""
    conf_matrix = sum(s["conf_matrix"] for s in states)
    evaluated: Dict[FrameKey, str] = {}
    for state in states:
        for key, file_name in state["evaluated"].items():
            if key in evaluated:
                raise ValueError(_duplicate_message(key, evaluated[key], file_name))
            evaluated[key] = file_name
    return conf_matrix, evaluated
