"""Segmentation metrics of a confusion matrix, one definition shared by the evaluator and the
seen-bias sweep (docs/METRICS.md), and the strict-JSON form of metrics."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Sequence, Tuple

import numpy as np

__all__ = ["confusion_matrix", "harmonic_mean", "json_safe", "mean", "segmentation_metrics"]


def mean(values: np.ndarray) -> float:
    """The mean of ``values``, NaN when there is none."""
    return float(np.mean(values)) if values.size else math.nan


def harmonic_mean(s: float, u: float) -> float:
    """hIoU = 2su / (s + u); NaN if either is NaN, 0 when both are 0."""
    if math.isnan(s) or math.isnan(u):
        return math.nan
    return 2 * s * u / (s + u) if s + u > 0 else 0.0


def confusion_matrix(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_label: int
) -> np.ndarray:
    """[GT, prediction] pixel counts of one frame, pixels whose GT is ``ignore_label`` left out."""
    valid = gt != ignore_label
    flat = num_classes * gt[valid] + pred[valid]
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_metrics(
    conf: np.ndarray, class_names: Sequence[str], seen: Sequence[int], unseen: Sequence[int]
) -> Tuple["OrderedDict[str, float]", "OrderedDict[str, float]"]:
    """Summary metrics and per-class ``IoU-<name>`` / ``ACC-<name>`` (percent) from a [GT,
    prediction] matrix: means over the classes present in the GT; an absent class gets NaN.
    ``mIoU-seen`` / ``mIoU-unseen`` for each non-empty group, ``hIoU`` with both."""
    num_classes = len(class_names)
    tp = conf.diagonal().astype(np.float64)
    pos_gt = conf.sum(axis=1).astype(np.float64)
    pos_pred = conf.sum(axis=0).astype(np.float64)
    present = pos_gt > 0
    iou = np.full(num_classes, np.nan)
    acc = np.full(num_classes, np.nan)
    acc[present] = tp[present] / pos_gt[present]
    # union >= GT count > 0 for present classes
    iou[present] = tp[present] / (pos_gt + pos_pred - tp)[present]
    total = pos_gt.sum()

    res: "OrderedDict[str, float]" = OrderedDict()
    res["mIoU"] = 100 * mean(iou[present])
    res["fwIoU"] = (
        100 * float(np.sum(pos_gt[present] * iou[present]) / total) if total else math.nan
    )
    res["mACC"] = 100 * mean(acc[present])
    res["pACC"] = 100 * float(tp.sum() / total) if total else math.nan
    group_miou = {}
    for name, group in (("seen", seen), ("unseen", unseen)):
        if group:  # an empty group (e.g. vspw_val_unseen has no seen class) is not reported
            group_miou[name] = 100 * mean(iou[group][present[group]])
            res[f"mIoU-{name}"] = group_miou[name]
    if len(group_miou) == 2:
        res["hIoU"] = harmonic_mean(group_miou["seen"], group_miou["unseen"])

    per_class: "OrderedDict[str, float]" = OrderedDict()
    for i, name in enumerate(class_names):
        per_class[f"IoU-{name}"] = 100 * float(iou[i])
    for i, name in enumerate(class_names):
        per_class[f"ACC-{name}"] = 100 * float(acc[i])
    return res, per_class


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (nested in dicts / lists) replaced by None, for
    strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
