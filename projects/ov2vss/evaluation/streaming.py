"""Streaming evaluation: every video in frame order, every frame encoded once (docs/METRICS.md).

Window-by-window evaluation (detectron2's ``inference_on_dataset`` over the inference video
mapper) builds one window per annotated frame and runs the backbone on its 5 frames (t-9, t-6,
t-3, t and the distant random frame) and CLIP's image tower on 4: each frame is encoded about
9 times. :func:`inference_on_videos` instead groups the dataset's records into videos and runs
:meth:`ov2vss.predictor.VideoPredictor.predict_targets` on each, which reads and encodes every
frame a window needs once and reuses its features for every window that contains it. Windows
and random frames follow the inference mapper's rules for the video's full length
(:mod:`ov2vss.data.frame_sampling`), and frames are read and resized as the mapper does
(INPUT.FORMAT, ``build_augmentation(cfg, is_train=False)``), so the predictions equal
window-by-window inference up to float rounding.

* VSPW (every frame annotated): each video is streamed from its first to its last frame.
* Cityscapes sequences (one annotated frame per 30-frame snippet): only the frames of the
  annotated frame's window and its random frame are read (5 of 30).

The evaluator receives each frame's record fields (``file_name``, ``sem_seg_file_name``,
``raw_sem_seg_file_name``, ``video_id``, ``frame_index``, ``height``, ``width``) and its
prediction, one frame at a time, each video in frame order, so
:class:`~ov2vss.evaluation.VideoSemSegEvaluator` scores video consistency as the frames come
(:mod:`.video_consistency`), holding at most ``max(TEST.VC_WINDOWS)`` frames.
Under DDP whole videos are split across processes (balanced by annotated frames,
deterministically); the evaluator gathers as with the test loader.

Both evaluation modes log "frames done / total, ETA" at INFO every ``PROGRESS_PERIOD_S``
seconds and at the end (:class:`EvalProgress`).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.io import check_same_size, read_frame
from ..predictor import VideoPredictor
from .video_consistency import VideoKey, video_key

__all__ = [
    "EvalProgress",
    "VideoRecords",
    "assign_videos",
    "group_videos",
    "inference_on_videos",
    "with_progress",
]

logger = logging.getLogger(__name__)

PROGRESS_PERIOD_S = 10.0  # seconds between two progress lines
# the record fields the evaluator receives (those the inference mapper passes through)
_INPUT_FIELDS = (
    "file_name",
    "sem_seg_file_name",
    "raw_sem_seg_file_name",
    "video_id",
    "frame_index",
    "height",
    "width",
)


class EvalProgress:
    """Logs ``"<dataset>: <done>/<total> frames, <s>/frame, ETA <h:mm:ss>"`` at INFO every
    ``period`` seconds (and :meth:`finish`: the total time). ``total`` counts this process's
    frames."""

    def __init__(self, dataset_name: str, total: int, period: float = PROGRESS_PERIOD_S):
        self.dataset_name = dataset_name
        self.total = int(total)
        self.period = float(period)
        self.done = 0
        self._start = self._last = time.perf_counter()
        where = f" (process {comm.get_rank()} of {comm.get_world_size()})"
        self._where = where if comm.get_world_size() > 1 else ""

    def update(self, frames: int = 1) -> None:
        self.done += frames
        now = time.perf_counter()
        if now - self._last >= self.period and self.done < self.total:
            self._last = now
            per_frame = (now - self._start) / self.done
            eta = datetime.timedelta(seconds=int(per_frame * (self.total - self.done)))
            logger.info(
                f"Evaluating {self.dataset_name}{self._where}: {self.done}/{self.total} frames, "
                f"{per_frame:.3f} s/frame, ETA {eta}"
            )

    def finish(self) -> None:
        elapsed = time.perf_counter() - self._start
        per_frame = elapsed / self.done if self.done else 0.0
        logger.info(
            f"Evaluated {self.dataset_name}{self._where}: {self.done}/{self.total} frames in "
            f"{datetime.timedelta(seconds=int(elapsed))} ({per_frame:.3f} s/frame)"
        )


class _ProgressEvaluator(DatasetEvaluator):
    """An evaluator that counts the frames it is given (:class:`EvalProgress`)."""

    def __init__(self, evaluator: DatasetEvaluator, progress: EvalProgress):
        self.evaluator = evaluator
        self.progress = progress

    def reset(self) -> None:
        self.evaluator.reset()

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        self.evaluator.process(inputs, outputs)
        self.progress.update(len(inputs))

    def evaluate(self):
        self.progress.finish()
        return self.evaluator.evaluate()


def with_progress(
    evaluator: Union[DatasetEvaluator, Sequence[DatasetEvaluator]], dataset_name: str, total: int
) -> DatasetEvaluator:
    """``evaluator`` (or several) logging progress, for detectron2's ``inference_on_dataset``:
    ``total`` = the frames of this process (the test loader's length at batch size 1)."""
    if not isinstance(evaluator, DatasetEvaluator):
        evaluator = DatasetEvaluators(list(evaluator))
    return _ProgressEvaluator(evaluator, EvalProgress(dataset_name, total))


class VideoRecords:
    """The annotated records of one video (one ``video_frames`` list), by frame index."""

    def __init__(self, key: VideoKey, frames: Sequence[str]):
        self.key = key
        self.frames = frames
        self.records: Dict[int, Dict[str, Any]] = {}

    @property
    def video_id(self) -> str:
        return self.key[0]

    def add(self, record: Dict[str, Any]) -> None:
        """Add a record, checked as the video mapper checks it."""
        frames, index, file_name = (
            record.get("video_frames"),
            record["frame_index"],
            record["file_name"],
        )
        if not frames:
            raise ValueError(
                f"record {file_name} has no video_frames: streaming evaluation needs video "
                "records (set TEST.STREAMING False to evaluate with the test loader)"
            )
        if frames is not self.frames and list(frames) != list(self.frames):
            raise ValueError(
                f"records of video '{self.video_id}' list different video_frames "
                f"({file_name} and {self.records[min(self.records)]['file_name']})"
            )
        if not 0 <= index < len(frames) or str(frames[index]) != str(file_name):
            raise ValueError(
                f"record {file_name}: frame_index {index} does not point at it in video_frames "
                f"(length {len(frames)})"
            )
        if index in self.records:
            raise ValueError(
                f"frame {index} of video '{self.video_id}' is listed twice "
                f"({self.records[index]['file_name']} and {file_name})"
            )
        self.records[index] = record


def group_videos(records: Sequence[Dict[str, Any]]) -> List[VideoRecords]:
    """The records grouped into videos (in order of first appearance): one video per
    ``(video_id, video_frames)``, as the evaluator groups them."""
    videos: "OrderedDict[VideoKey, VideoRecords]" = OrderedDict()
    for record in records:
        key = video_key(record)
        if key not in videos:
            videos[key] = VideoRecords(key, record.get("video_frames") or [])
        videos[key].add(record)
    return list(videos.values())


def assign_videos(costs: Sequence[int], world_size: int) -> List[int]:
    """The process of each video: the costliest video first, each to the least loaded
    process (ties: the lower rank). Deterministic: every process computes the same split."""
    loads = [0] * world_size
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owner[i] = rank
        loads[rank] += costs[i]
    return owner


class _FrameReader:
    """Reads a video's frames as the inference mapper does (INPUT.FORMAT), checked against the
    first frame read and, for annotated frames, against their record's size."""

    def __init__(self, video: VideoRecords, image_format: str):
        self.video = video
        self.image_format = image_format
        self._ref: Optional[tuple] = None  # (shape, path) of the first frame read

    def __call__(self, index: int) -> np.ndarray:
        path = str(self.video.frames[index])
        image = read_frame(path, self.image_format)
        record = self.video.records.get(index)
        if record is not None and (
            record.get("height", image.shape[0]) != image.shape[0]
            or record.get("width", image.shape[1]) != image.shape[1]
        ):
            raise ValueError(
                f"frame {path} has size {image.shape[1]}x{image.shape[0]} (WxH) but the record "
                f"says {record.get('width')}x{record.get('height')}"
            )
        if self._ref is None:
            self._ref = (image.shape, path)
        else:
            check_same_size(image, path, self._ref[0], self._ref[1], "frame")
        return image


def _evaluator_input(record: Dict[str, Any]) -> Dict[str, Any]:
    return {k: record[k] for k in _INPUT_FIELDS if k in record}


def inference_on_videos(
    model: nn.Module,
    cfg: CfgNode,
    dataset_name: str,
    evaluator: Union[DatasetEvaluator, Sequence[DatasetEvaluator], None],
    progress_period: float = PROGRESS_PERIOD_S,
) -> Dict[str, Any]:
    """Evaluate ``model`` on ``dataset_name`` video by video, every frame encoded once.

    The drop-in replacement of ``inference_on_dataset(model, test_loader, evaluator)`` with the
    video mapper at inference (see the module docstring): same evaluator calls (one frame per
    ``process``), same return value (``evaluator.evaluate()``, ``{}`` on non-main processes).
    The model (or its DDP wrapper) runs in eval mode without gradients; its test vocabulary is
    used as set (``OV2VSS.vocabulary``).
    """
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif not isinstance(evaluator, DatasetEvaluator):
        evaluator = DatasetEvaluators(list(evaluator))
    offsets = [int(k) for k in cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS]
    if any(k < 0 for k in offsets):
        raise ValueError(
            f"INPUT.TEMPORAL.REFERENCE_OFFSETS={offsets} has future frames; streaming "
            "evaluation needs offsets k >= 0: set TEST.STREAMING False"
        )
    videos = group_videos(DatasetCatalog.get(dataset_name))
    owners = assign_videos([len(v.records) for v in videos], comm.get_world_size())
    mine = [v for v, rank in zip(videos, owners) if rank == comm.get_rank()]
    total = sum(len(v.records) for v in mine)
    logger.debug(
        f"Streaming evaluation of {dataset_name}: {len(mine)} of {len(videos)} videos, "
        f"{total} frames on this process"
    )
    net = model.module if isinstance(model, DistributedDataParallel) else model

    evaluator.reset()
    progress = EvalProgress(dataset_name, total, progress_period)
    with inference_context(model), torch.no_grad():
        predictor = VideoPredictor(cfg, model=net, frame_format=cfg.INPUT.FORMAT)
        for video in mine:
            outputs = predictor.predict_targets(
                len(video.frames), video.records, _FrameReader(video, cfg.INPUT.FORMAT)
            )
            for index, output in outputs:
                evaluator.process([_evaluator_input(video.records[index])], [output])
                progress.update()
    progress.finish()
    results = evaluator.evaluate()
    return {} if results is None else results
