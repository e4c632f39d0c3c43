"""Video semantic segmentation evaluator: per-frame IoU/accuracy metrics, the seen/unseen
split of the open-vocabulary protocol, and VSPW's video consistency (VC_n).

A sibling of detectron2's :class:`~detectron2.evaluation.SemSegEvaluator` with the same
``reset/process/evaluate`` interface. The ground truth is what the stock evaluator reads: each
record's ``sem_seg_file_name``, a label map already in the dataset's label space (written by
datasets/prepare_vspw.py for VSPW), at the original resolution. Video consistency follows
VSPW's ``VC_perclip.py`` and uses the raw masks (``raw_sem_seg_file_name``); see README.md,
"Metrics".
"""

import json
import logging
import math
import os
import zlib
from collections import OrderedDict, defaultdict, deque
from typing import Any, Deque, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from ..data.io import check_same_size, read_mask, relabel
from .report import write_report
from .seen_bias import SeenBiasSweep
from .seen_bias import _harmonic as _harmonic_mean  # one definition of the means
from .seen_bias import _mean, json_safe

__all__ = ["VideoSemSegEvaluator", "VideoKey", "video_key"]

# A video is the frame sequence its records index into: records with the same video_id and
# the same video_frames list (a Cityscapes sequence with several annotated frames has one
# 30-frame snippet per annotated frame, each its own video here).
VideoKey = Tuple[str, str]  # (video_id, first path of video_frames, "" without the list)
FrameKey = Tuple[str, str, int]  # VideoKey + (frame_index,)


class _FrameMaps(NamedTuple):
    """What the evaluator keeps of one frame: zlib-compressed label maps, so that a whole
    VSPW split (~24.5k frames of 480x853) fits in memory and can be gathered cheaply."""

    file_name: str
    gt_file: str  # the mask that ``gt`` holds (the raw mask when the record has one)
    shape: Tuple[int, int]
    gt: Optional[bytes]  # ground truth of the video consistency: raw mask values
    pred: Optional[bytes]  # argmax prediction


class _VideoConsistency:
    """VSPW's ``VC_perclip.py`` over one video, fed its frames in order (README "Metrics").

    Holds only the last ``max(windows)`` frames (decoded ground truth and prediction). The
    window of ``n`` frames starting at ``i`` is scored when frame ``i + n`` arrives: the script
    takes ``i in range(len - n)``, so a window counts only when some frame follows it. Scores
    are kept per window in the order of ``i``, as the script lists them; pickled (gathered
    across processes), the held frames travel zlib-compressed.
    """

    def __init__(self, windows: Sequence[int], video_id: str, dtype: Any):
        self.windows = tuple(windows)
        self.video_id = video_id
        self.dtype = dtype
        self.count = 0  # frames pushed so far
        self.shape: Optional[Tuple[int, int]] = None
        self.first_file = ""
        self.tail: Deque[Tuple[np.ndarray, np.ndarray]] = deque(maxlen=max(self.windows))
        self.scores: Dict[int, List[float]] = {n: [] for n in self.windows}

    def push(self, gt: np.ndarray, pred: np.ndarray, gt_file: str) -> None:
        """Add the next frame of the video (its VC ground truth and argmax prediction)."""
        if self.shape is None:
            self.shape, self.first_file = tuple(gt.shape), gt_file
        elif tuple(gt.shape) != self.shape:
            raise ValueError(
                f"frames of video '{self.video_id}' differ in size: {self.first_file} is "
                f"{self.shape} but {gt_file} is {tuple(gt.shape)} (HxW)"
            )
        for n in self.windows:
            if len(self.tail) >= n:  # the window of the n frames before this one is complete
                self._score(n)
        self.tail.append(
            (np.ascontiguousarray(gt, self.dtype), np.ascontiguousarray(pred, self.dtype))
        )
        self.count += 1

    def _score(self, n: int) -> None:
        frames = list(self.tail)[-n:]
        ref_gt, ref_pred = frames[0]
        gt_same = np.ones(self.shape, dtype=bool)  # G = AND_j (GT_i == GT_i+j)
        pred_same = np.ones(self.shape, dtype=bool)  # P = AND_j (Pred_i == Pred_i+j)
        for gt_j, pred_j in frames[1:]:
            gt_same &= ref_gt == gt_j
            pred_same &= ref_pred == pred_j
        consistent_gt = int(gt_same.sum())
        if consistent_gt:  # |G| = 0 is NaN in the script, left out of its nanmean
            both = int(np.logical_and(gt_same, pred_same).sum())
            self.scores[n].append(both / consistent_gt)

    def close(self) -> None:
        """The video's last frame has been pushed: no window can start any more."""
        self.tail.clear()

    def copy(self) -> "_VideoConsistency":
        """A copy to continue (the held frames are shared: they are only read)."""
        new = _VideoConsistency(self.windows, self.video_id, self.dtype)
        new.count, new.shape, new.first_file = self.count, self.shape, self.first_file
        new.tail.extend(self.tail)
        new.scores = {n: list(v) for n, v in self.scores.items()}
        return new

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["tail"] = [(_compress(g, self.dtype), _compress(p, self.dtype)) for g, p in self.tail]
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        tail = state.pop("tail")
        self.__dict__.update(state)
        self.tail = deque(
            (
                (_decompress(g, self.shape, self.dtype), _decompress(p, self.shape, self.dtype))
                for g, p in tail
            ),
            maxlen=max(self.windows),
        )


class VideoSemSegEvaluator(DatasetEvaluator):
    """Evaluate video semantic segmentation outputs ``{"sem_seg": Tensor[C, H, W]}``.

    Metrics (all in percent, under ``results["sem_seg"]``):

    * ``mIoU``, ``mACC``: mean of the per-class IoU = TP / (TP + FP + FN) and accuracy
      = TP / (TP + FN) over the classes **present in the ground truth** (GT pixel count > 0);
      classes absent from the GT still get ``IoU-<c>`` / ``ACC-<c>`` keys, with value NaN
      (as detectron2's SemSegEvaluator), and do not enter any mean.
    * ``fwIoU`` = sum_c freq_gt(c) * IoU(c), freq_gt(c) = GT pixels of c / valid GT pixels.
    * ``pACC`` = correctly labelled pixels / valid GT pixels.
    * ``mIoU-seen`` / ``mIoU-unseen``: mIoU over the metadata's ``seen_classes`` /
      ``unseen_classes`` present in the GT; ``hIoU`` = 2su / (s + u) when both groups are
      non-empty. When only one group is non-empty only its mean is reported.
    * With both groups, the seen-bias sweep of calibrated stacking (:mod:`.seen_bias`:
      mIoU-seen / mIoU-unseen / hIoU for a grid of seen biases, ``AUSUC``, ``hIoU-best``,
      ``seen-bias-best``), from the same probabilities; it goes to ``metrics.json`` under
      ``seen_bias`` (not into the returned results, which hold scalars per metric name).
      ``report.png`` (:mod:`.report`) is written beside ``metrics.json``.
    * ``mVC<n>`` for each window ``n`` of ``vc_windows``: VSPW's ``VC_perclip.py``. Per video,
      frames sorted by ``frame_index``; for every window start ``i in range(len - n)``,
      ``G = AND_{j<n} (GT_i == GT_{i+j})``, ``P = AND_{j<n} (Pred_i == Pred_{i+j})`` and
      ``VC = |G & P| / |G|``. Windows with ``|G| = 0`` (NaN in the script) are left out; the
      score is the mean over all windows of all videos (the script's ``nanmean`` of every
      window's value, not a mean of per-video means), NaN (with a warning) when there is no
      window. As in the script, GT is the *raw* mask (``raw_sem_seg_file_name``; the label
      map where a record has none) and no pixel is filtered out: a pixel whose raw value flips
      between 0 ("others") and 255 ("void") changes. Pred is the argmax in the dataset's
      label space; only equality across frames enters, so its ids need not be raw ids.

    Ground truth (label ids in ``[0, C)`` or the ignore label) is read from each record's
    ``sem_seg_file_name``, exactly as detectron2's SemSegEvaluator reads it. The metadata's
    ``label_lut`` (raw value -> label id), when present, validates the raw masks: a raw value
    it does not allow, or a label map that disagrees with its raw mask (a stale label map),
    is an error naming the files. The confusion matrix (over pixels whose GT is not the ignore
    label) is accumulated in :meth:`process`.
    Under DDP, :meth:`evaluate` gathers the state on the main process, which computes the
    metrics; the other processes return None.

    A *video* is the records with one ``video_id`` and one ``video_frames`` list, its frames
    ordered by ``frame_index`` (so each Cityscapes snippet is its own video). Frames may arrive
    in any order and be spread over processes; evaluating the same frame twice raises
    ``ValueError`` (it points to a sampler bug). For VC, two paths give the same numbers,
    because both feed each video's frames, in order, to the same per-video computation:

    * **in order** (streaming evaluation, :mod:`ov2vss.evaluation.streaming`; the one-process
      test loader): while a video's frames arrive one after another, from its first
      annotated frame on, each the next one of its annotated frames and no other video's frame
      in between, its windows are scored as they complete and only its last
      ``max(vc_windows)`` frames are held (:attr:`frames_held`);
    * **out of order** (shuffled, interleaved, split across processes): the remaining frames
      are kept zlib-compressed and fed to the video's computation, in order, in
      :meth:`evaluate`.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        vc_windows: Sequence[int] = (8, 16),
        dump_predictions: bool = False,
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
        """
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._vc_windows = _check_windows(vc_windows)
        self._dump_predictions = bool(dump_predictions)

        meta = MetadataCatalog.get(dataset_name)
        self._class_names: List[str] = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        duplicated = sorted({c for c in self._class_names if self._class_names.count(c) > 1})
        if duplicated:
            raise ValueError(
                f"dataset '{dataset_name}' has duplicated class names {duplicated}; "
                "per-class metric keys would collide"
            )
        self._ignore_label = int(meta.get("ignore_label", 255))
        # raw value -> label id; only used to validate raw masks against their label maps
        lut = meta.get("label_lut", None)
        self._label_lut = None if lut is None else np.asarray(lut, dtype=np.int64)
        if self._label_lut is not None and self._label_lut.shape != (256,):
            raise ValueError(f"label_lut of '{dataset_name}' must have 256 entries, got {len(lut)}")
        self._seen = _class_group(meta, "seen_classes", self._num_classes, dataset_name)
        self._unseen = _class_group(meta, "unseen_classes", self._num_classes, dataset_name)
        # both groups scored: the seen-bias sweep (seen_bias.py) from the same predictions
        self._with_sweep = bool(self._seen) and bool(self._unseen)
        self._dataset_id_of = None
        if meta.get("stuff_dataset_id_to_contiguous_id", None):
            self._dataset_id_of = {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}

        self._records: Dict[str, Dict[str, Any]] = {
            r["file_name"]: r for r in DatasetCatalog.get(dataset_name)
        }
        # every video's annotated frames: frame_index -> position in frame order
        indices: Dict[VideoKey, Set[int]] = defaultdict(set)
        for r in self._records.values():
            indices[video_key(r)].add(int(r["frame_index"]))
        self._positions: Dict[VideoKey, Dict[int, int]] = {
            v: {f: i for i, f in enumerate(sorted(frames))} for v, frames in indices.items()
        }
        # Label maps are only needed for VC and for the prediction dump; with the dump every
        # frame's maps are kept (out-of-order path)
        self._keep_maps = bool(self._vc_windows) or self._dump_predictions
        self._in_order_vc = bool(self._vc_windows) and not self._dump_predictions
        fits_uint8 = self._num_classes <= 256 and 0 <= self._ignore_label <= 255
        self._map_dtype = np.uint8 if fits_uint8 else np.int32
        self._cpu_device = torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        self._conf_matrix = np.zeros((self._num_classes, self._num_classes), dtype=np.int64)
        self._evaluated: Dict[FrameKey, str] = {}  # every frame processed -> its file
        self._frames: Dict[FrameKey, _FrameMaps] = {}  # maps kept for evaluate (out of order)
        self._videos: Dict[VideoKey, _VideoConsistency] = {}  # VC of videos fed in order
        self._open: Set[VideoKey] = set()  # those of them not finished (they hold frames)
        self._current: Optional[VideoKey] = None  # the video the in-order path is reading
        self._peak_frames_held = 0
        self._sweep = (
            SeenBiasSweep(
                self._num_classes, self._seen, self._unseen, ignore_label=self._ignore_label
            )
            if self._with_sweep
            else None
        )

    @property
    def frames_held(self) -> int:
        """Frames whose label maps are held now (both VC paths)."""
        return len(self._frames) + sum(len(self._videos[v].tail) for v in self._open)

    @property
    def peak_frames_held(self) -> int:
        """The most frames held at once since :meth:`reset`: at most ``max(vc_windows)`` when
        every video's frames arrive in order."""
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
                raise ValueError(f"{file_name} is not a frame of dataset '{self._dataset_name}'")
            gt_file = record.get("sem_seg_file_name")
            if not gt_file:
                raise ValueError(
                    f"{file_name} in dataset '{self._dataset_name}' has no sem_seg_file_name"
                )
            key = self._frame_key(inp, record)
            if key in self._evaluated:
                raise ValueError(_duplicate_message(key, self._evaluated[key], file_name))

            pred = self._prediction(out, file_name)
            # the label map holds label ids: no relabelling, only the range check
            gt = relabel(
                read_mask(gt_file),
                None,
                gt_file,
                num_classes=self._num_classes,
                ignore_label=self._ignore_label,
            )
            check_same_size(gt, gt_file, pred.shape, f"the prediction for {file_name}", "mask")
            vc_file, vc_gt = gt_file, None
            if self._vc_windows:
                vc_file = record.get("raw_sem_seg_file_name") or gt_file
                vc_gt = gt if vc_file == gt_file else self._raw_mask(vc_file, gt, gt_file)

            valid = gt != self._ignore_label
            flat = self._num_classes * gt[valid] + pred[valid]
            self._conf_matrix += np.bincount(flat, minlength=self._num_classes**2).reshape(
                self._num_classes, self._num_classes
            )
            if self._sweep is not None:
                self._sweep.process(out["sem_seg"], gt)
            self._evaluated[key] = file_name
            if self._keep_maps:
                self._keep_frame_maps(key, file_name, vc_file, vc_gt, pred)
        self._peak_frames_held = max(self._peak_frames_held, self.frames_held)

    def _frame_key(self, inp: Dict[str, Any], record: Dict[str, Any]) -> FrameKey:
        """The frame's key, from its record; an input that names another video or frame
        index than its record is an error."""
        for field in ("video_id", "frame_index"):
            if field in inp and str(inp[field]) != str(record[field]):
                raise ValueError(
                    f"input {inp['file_name']} has {field}={inp[field]!r} but its record in "
                    f"'{self._dataset_name}' has {record[field]!r}"
                )
        return video_key(record) + (int(record["frame_index"]),)

    def _keep_frame_maps(
        self,
        key: FrameKey,
        file_name: str,
        vc_file: str,
        vc_gt: Optional[np.ndarray],
        pred: np.ndarray,
    ) -> None:
        """Feed the frame to its video's VC when it is the next frame in order (see the class
        docstring), else keep its maps for :meth:`evaluate`."""
        video, position = key[:2], self._positions[key[:2]][key[2]]
        if self._in_order_vc:
            if self._current not in (None, video):
                self._current = None  # another video's frame: this one is no longer in order
            stream = self._videos.get(video)
            if stream is None and position == 0:
                stream = self._videos[video] = _VideoConsistency(
                    self._vc_windows, video[0], self._map_dtype
                )
                self._open.add(video)
                self._current = video
            if stream is not None and self._current == video and position == stream.count:
                stream.push(vc_gt, pred, vc_file)
                if stream.count == len(self._positions[video]):  # the video's last frame
                    stream.close()
                    self._open.discard(video)
                    self._current = None
                return
            if self._current == video:
                self._current = None
        self._frames[key] = _FrameMaps(
            file_name,
            vc_file,
            tuple(pred.shape),
            _compress(vc_gt, self._map_dtype) if self._vc_windows else None,
            _compress(pred, self._map_dtype),
        )

    def evaluate(self) -> Optional["OrderedDict[str, Dict[str, float]]"]:
        """Return ``OrderedDict(sem_seg={metric: value in percent})`` on the main process
        (None on the others); write ``metrics.json`` into ``output_dir`` when given."""
        state = {
            "conf_matrix": self._conf_matrix,
            "evaluated": self._evaluated,
            "frames": self._frames,
            "videos": self._videos,
            "seen_bias": self._sweep.state() if self._sweep is not None else None,
        }
        if self._distributed:
            comm.synchronize()
            states = comm.gather(state, dst=0)
            if not comm.is_main_process():
                return None
        else:
            states = [state]
        conf_matrix, evaluated, frames, videos = _merge_states(states)
        if not evaluated:
            self._logger.warning(
                f"VideoSemSegEvaluator on '{self._dataset_name}' received no predictions."
            )
            return OrderedDict()

        res, per_class = self._segmentation_metrics(conf_matrix)
        for n, score in self._video_consistency(videos, frames).items():
            res[f"mVC{n}"] = 100 * score
        summary = res.copy()
        res.update(per_class)
        sweep = self._sweep_results(states)

        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            written = {"sem_seg": _nan_to_none(res)}
            if sweep is not None:
                written["seen_bias"] = json_safe(sweep)
            with PathManager.open(os.path.join(self._output_dir, "metrics.json"), "w") as f:
                # strict JSON: NaN (class absent from the GT, no VC window) becomes null
                json.dump(written, f, indent=2, allow_nan=False)
            self._write_report(res, sweep)
            if self._dump_predictions:
                self._dump(frames)
        sweep_line = ""
        if sweep is not None:
            sweep_line = (
                f"\nseen-bias sweep: AUSUC {sweep['AUSUC']:.2f}, hIoU-best "
                f"{sweep['hIoU-best']:.2f} at seen bias {sweep['seen-bias-best']:g} "
                f"(hIoU {res['hIoU']:.2f} at 0)"
            )
        self._logger.info(
            f"Video semantic segmentation results on '{self._dataset_name}' "
            f"({len(evaluated)} frames):\n" + create_small_table(summary) + sweep_line
        )
        return OrderedDict(sem_seg=res)

    # ------------------------------------------------------------------ helpers
    def _sweep_results(self, states: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """The seen-bias sweep of all processes (None without both class groups, or when the
        scores were not probabilities)."""
        if not self._with_sweep:
            return None
        merged = SeenBiasSweep(
            self._num_classes, self._seen, self._unseen, ignore_label=self._ignore_label
        )
        merged.merge(s["seen_bias"] for s in states)
        if merged.invalid is not None:
            self._logger.warning(
                f"no seen-bias sweep on '{self._dataset_name}': {merged.invalid} (the sweep "
                "calibrates log-probabilities, README 'The main job')"
            )
        return merged.results()

    def _write_report(self, res: Dict[str, float], sweep: Optional[Dict[str, Any]]) -> None:
        """report.png beside metrics.json (:mod:`ov2vss.evaluation.report`); a picture that
        cannot be drawn is a warning, the metrics are already written."""
        path = os.path.join(self._output_dir, "report.png")
        try:
            write_report(
                path, res, self._class_names, self._seen, self._unseen, sweep, self._dataset_name
            )
        except Exception as e:  # noqa: BLE001  (matplotlib / file errors: the report only)
            self._logger.warning(f"could not write the PNG report {path}: {e!r}")

    def _prediction(self, output: Dict[str, torch.Tensor], file_name: str) -> np.ndarray:
        scores = output["sem_seg"]
        if scores.ndim != 3 or scores.shape[0] != self._num_classes:
            raise ValueError(
                f"prediction for {file_name} must be a Tensor[C, H, W] with C = "
                f"{self._num_classes} (classes of '{self._dataset_name}'), "
                f"got shape {tuple(scores.shape)}"
            )
        return scores.argmax(dim=0).to(self._cpu_device).numpy().astype(np.int64)

    def _raw_mask(self, raw_file: str, labels: np.ndarray, label_file: str) -> np.ndarray:
        """The raw mask of a frame, checked against its label map through ``label_lut``."""
        raw = read_mask(raw_file)
        check_same_size(raw, raw_file, labels.shape, label_file, "raw mask")
        if self._label_lut is not None:
            expected = relabel(raw, self._label_lut, raw_file)  # raises on raw values not allowed
            differ = int(np.count_nonzero(expected != labels))
            if differ:
                raise ValueError(
                    f"label map {label_file} disagrees with its raw mask {raw_file} at {differ} "
                    "pixel(s) under the dataset's label_lut: the label maps are stale, write "
                    "them again (datasets/README.md)"
                )
        return raw

    def _segmentation_metrics(
        self, conf: np.ndarray
    ) -> Tuple["OrderedDict[str, float]", "OrderedDict[str, float]"]:
        """Summary metrics and per-class IoU/ACC (percent) from a [GT, prediction] matrix."""
        tp = conf.diagonal().astype(np.float64)
        pos_gt = conf.sum(axis=1).astype(np.float64)
        pos_pred = conf.sum(axis=0).astype(np.float64)
        present = pos_gt > 0
        iou = np.full(self._num_classes, np.nan)
        acc = np.full(self._num_classes, np.nan)
        acc[present] = tp[present] / pos_gt[present]
        # union >= GT count > 0 for present classes
        iou[present] = tp[present] / (pos_gt + pos_pred - tp)[present]
        total = pos_gt.sum()

        res: "OrderedDict[str, float]" = OrderedDict()
        res["mIoU"] = 100 * _mean(iou[present])
        res["fwIoU"] = (
            100 * float(np.sum(pos_gt[present] * iou[present]) / total) if total else math.nan
        )
        res["mACC"] = 100 * _mean(acc[present])
        res["pACC"] = 100 * float(tp.sum() / total) if total else math.nan
        group_miou = {}
        for name, group in (("seen", self._seen), ("unseen", self._unseen)):
            if group:  # an empty group (e.g. vspw_val_unseen has no seen class) is not reported
                group_miou[name] = 100 * _mean(iou[group][present[group]])
                res[f"mIoU-{name}"] = group_miou[name]
        if len(group_miou) == 2:
            res["hIoU"] = _harmonic_mean(group_miou["seen"], group_miou["unseen"])

        per_class: "OrderedDict[str, float]" = OrderedDict()
        for i, name in enumerate(self._class_names):
            per_class[f"IoU-{name}"] = 100 * float(iou[i])
        for i, name in enumerate(self._class_names):
            per_class[f"ACC-{name}"] = 100 * float(acc[i])
        return res, per_class

    def _video_consistency(
        self, videos: Dict[VideoKey, _VideoConsistency], frames: Dict[FrameKey, _FrameMaps]
    ) -> "OrderedDict[int, float]":
        """mVC<n> for every window n (see the class docstring), as fractions: the videos fed in
        order continue with their remaining frames, the others start here; the windows of
        all videos are averaged in the order of the videos' keys."""
        if not self._vc_windows:
            return OrderedDict()
        remaining: Dict[VideoKey, List[Tuple[int, _FrameMaps]]] = defaultdict(list)
        for key, maps in frames.items():
            remaining[key[:2]].append((key[2], maps))

        scores: Dict[int, List[float]] = {n: [] for n in self._vc_windows}
        for video in sorted(set(videos) | set(remaining)):
            if video in videos:  # a copy: evaluate() leaves the state as it is
                stream = videos[video].copy()
            else:
                stream = _VideoConsistency(self._vc_windows, video[0], self._map_dtype)
            for frame_index, maps in sorted(remaining[video], key=lambda x: x[0]):
                # frames fed in order are the video's first ones (any earlier frame would
                # have been evaluated twice, an error raised before)
                if self._positions[video][frame_index] < stream.count:
                    raise RuntimeError(f"frame {frame_index} of video '{video[0]}' out of order")
                stream.push(
                    _decompress(maps.gt, maps.shape, self._map_dtype),
                    _decompress(maps.pred, maps.shape, self._map_dtype),
                    maps.gt_file,
                )
            stream.close()
            for n in self._vc_windows:
                scores[n].extend(stream.scores[n])

        result: "OrderedDict[int, float]" = OrderedDict()
        for n in self._vc_windows:
            if not scores[n]:
                self._logger.warning(
                    f"mVC{n} on '{self._dataset_name}' is NaN: no video has a window of {n} "
                    "evaluated frames with consistent ground truth"
                )
            result[n] = float(np.mean(scores[n])) if scores[n] else math.nan
        return result

    def _dump(self, frames: Dict[FrameKey, _FrameMaps]) -> None:
        """Write detectron2's ``sem_seg_predictions.json``: one RLE per (frame, class)."""
        import pycocotools.mask as mask_util

        entries = []
        for key in sorted(frames):
            maps = frames[key]
            pred = _decompress(maps.pred, maps.shape, self._map_dtype)
            for label in np.unique(pred).tolist():
                rle = mask_util.encode(
                    np.asfortranarray((pred == label)[:, :, None], dtype=np.uint8)
                )[0]
                rle["counts"] = rle["counts"].decode("utf-8")
                category = self._dataset_id_of[label] if self._dataset_id_of else label
                entries.append(
                    {"file_name": maps.file_name, "category_id": category, "segmentation": rle}
                )
        with PathManager.open(os.path.join(self._output_dir, "sem_seg_predictions.json"), "w") as f:
            json.dump(entries, f)


def _compress(label_map: np.ndarray, dtype) -> bytes:
    # level 1: label maps are mostly flat regions, higher levels barely help and cost time
    return zlib.compress(np.ascontiguousarray(label_map, dtype=dtype).tobytes(), 1)


def _decompress(data: bytes, shape: Tuple[int, int], dtype) -> np.ndarray:
    return np.frombuffer(zlib.decompress(data), dtype=dtype).reshape(shape)


def _check_windows(vc_windows: Sequence[int]) -> Tuple[int, ...]:
    windows = tuple(int(n) for n in vc_windows)
    bad = [n for n in vc_windows if int(n) != n or n < 2]
    if bad:
        raise ValueError(
            f"vc_windows must be integers >= 2 (frames per window), got {list(vc_windows)}"
        )
    return tuple(sorted(set(windows)))


def _class_group(meta: Any, field: str, num_classes: int, dataset_name: str) -> List[int]:
    group = [int(c) for c in meta.get(field, None) or []]
    bad = [c for c in group if not 0 <= c < num_classes]
    if bad:
        raise ValueError(
            f"metadata {field} of '{dataset_name}' has class indices outside "
            f"[0, {num_classes}): {bad}"
        )
    return group


def video_key(record: Dict[str, Any]) -> VideoKey:
    """The video a record belongs to (see ``VideoKey``)."""
    frames = record.get("video_frames")
    return str(record["video_id"]), str(frames[0]) if frames else ""


def _duplicate_message(key: FrameKey, first: str, second: str) -> str:
    return (
        f"frame {key[2]} of video '{key[0]}' evaluated twice ({first} and {second}); "
        "the test sampler must visit every frame once"
    )


def _merge_states(states: List[Dict[str, Any]]) -> Tuple[
    np.ndarray,
    Dict[FrameKey, str],
    Dict[FrameKey, _FrameMaps],
    Dict[VideoKey, _VideoConsistency],
]:
    """Sum the confusion matrices and join the evaluated frames, the kept frame maps and the
    in-order VC of all processes."""
    conf_matrix = sum(s["conf_matrix"] for s in states)
    evaluated: Dict[FrameKey, str] = {}
    frames: Dict[FrameKey, _FrameMaps] = {}
    videos: Dict[VideoKey, _VideoConsistency] = {}
    for state in states:
        for key, file_name in state["evaluated"].items():
            if key in evaluated:
                raise ValueError(_duplicate_message(key, evaluated[key], file_name))
            evaluated[key] = file_name
        frames.update(state["frames"])
        videos.update(state["videos"])  # unique: each starts at its video's first frame
    return conf_matrix, evaluated, frames, videos


def _nan_to_none(metrics: Dict[str, float]) -> Dict[str, Optional[float]]:
    return {k: (None if math.isnan(v) else v) for k, v in metrics.items()}
