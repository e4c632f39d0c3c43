"""The ground truth the evaluator reads for a frame, checked, with errors naming the files.

* The label map (``sem_seg_file_name``): label ids in ``[0, C)`` or the ignore label, read as
  detectron2's SemSegEvaluator reads it; the metrics' ground truth.
* The raw mask (``raw_sem_seg_file_name``): the ground truth of video consistency, as VSPW's
  script compares it (docs/METRICS.md). Where the dataset has a ``label_lut`` (raw value ->
  label id), the raw mask must map onto its label map: a raw value the table does not allow,
  or a label map that disagrees with its raw mask (a stale label map), is an error.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..data.io import check_same_size, read_mask, relabel

__all__ = ["check_label_lut", "read_label_map", "read_raw_mask"]


def check_label_lut(lut: Optional[Sequence[int]], dataset_name: str) -> Optional[np.ndarray]:
    """A dataset's ``label_lut`` as an array of 256 entries (None stays None)."""
    if lut is None:
        return None
    table = np.asarray(lut, dtype=np.int64)
    if table.shape != (256,):
        raise ValueError(f"label_lut of '{dataset_name}' must have 256 entries, got {len(lut)}")
    return table


def read_label_map(path: str, num_classes: int, ignore_label: int) -> np.ndarray:
    """A label map, its values checked to be label ids or ``ignore_label``."""
    # the label map holds label ids: no relabelling, only the range check
    return relabel(read_mask(path), None, path, num_classes=num_classes, ignore_label=ignore_label)


def read_raw_mask(
    raw_file: str, labels: np.ndarray, label_file: str, label_lut: Optional[np.ndarray]
) -> np.ndarray:
    """The raw mask of a frame, checked against its label map (``labels`` read from
    ``label_file``) through ``label_lut`` when there is one."""
    raw = read_mask(raw_file)
    check_same_size(raw, raw_file, labels.shape, label_file, "raw mask")
    if label_lut is not None:
        expected = relabel(raw, label_lut, raw_file)  # raises on raw values not allowed
        differ = int(np.count_nonzero(expected != labels))
        if differ:
            raise ValueError(
                f"label map {label_file} disagrees with its raw mask {raw_file} at {differ} "
                "pixel(s) under the dataset's label_lut: the label maps are stale, write "
                "them again (datasets/README.md)"
            )
    return raw
