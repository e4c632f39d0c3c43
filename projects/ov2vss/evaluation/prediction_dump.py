"""detectron2's ``sem_seg_predictions.json`` (``TEST.DUMP_PREDICTIONS``, off by default: large
on VSPW): one RLE per frame and class present in its prediction, as SemSegEvaluator writes it.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, NamedTuple, Optional, Tuple

import numpy as np
from detectron2.utils.file_io import PathManager

from .video_consistency import FrameKey, compress_map, decompress_map

__all__ = ["PredictionDump", "write_predictions"]


class _Prediction(NamedTuple):
    file_name: str
    shape: Tuple[int, int]
    pred: bytes  # argmax prediction, zlib-compressed


class PredictionDump:
    """Every evaluated frame's argmax prediction, compressed, until :func:`write_predictions`;
    :attr:`frames` is what a process sends to the main one."""

    def __init__(self, dtype: Any):
        self.dtype = dtype
        self.frames: Dict[FrameKey, _Prediction] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def add(self, key: FrameKey, file_name: str, pred: np.ndarray) -> None:
        self.frames[key] = _Prediction(file_name, tuple(pred.shape), compress_map(pred, self.dtype))


def write_predictions(
    path: str,
    states: Iterable[Dict[FrameKey, _Prediction]],
    dtype: Any,
    dataset_id_of: Optional[Dict[int, int]] = None,
) -> None:
    """Write the :attr:`PredictionDump.frames` of all processes to ``path``, frames in key
    order; ``dataset_id_of`` maps label ids to the dataset's category ids."""
    import pycocotools.mask as mask_util

    frames: Dict[FrameKey, _Prediction] = {}
    for state in states:
        frames.update(state)
    entries = []
    for key in sorted(frames):
        frame = frames[key]
        pred = decompress_map(frame.pred, frame.shape, dtype)
        for label in np.unique(pred).tolist():
            rle = mask_util.encode(np.asfortranarray((pred == label)[:, :, None], dtype=np.uint8))[
                0
            ]
            rle["counts"] = rle["counts"].decode("utf-8")
            category = dataset_id_of[label] if dataset_id_of else label
            entries.append(
                {"file_name": frame.file_name, "category_id": category, "segmentation": rle}
            )
    with PathManager.open(path, "w") as f:
        json.dump(entries, f)
