"""The seen–unseen curve: calibrated stacking evaluated for a grid of seen biases at once.

Calibrated stacking (Chao et al., "An empirical study and analysis of generalized zero-shot
learning for object recognition in the wild", ECCV 2016; SPNet's calibration for zero-shot
segmentation) labels a pixel with ``argmax_c (log p_c - gamma * [c is seen])``: gamma > 0
moves pixels from seen to unseen classes, gamma < 0 the other way. docs/METRICS.md explains
how to read the curve; ``MODEL.OV2VSS.SEEN_BIAS`` applies one gamma at inference.

:class:`SeenBiasSweep` accumulates, from the probabilities the evaluator already receives,
the confusion matrix of every gamma of a grid — without a second forward pass and without
storing per-pixel scores. Per pixel only two candidates exist for any gamma: the best seen
class ``a_s`` (log-probability ``l_s``) and the best other class ``a_o`` (``l_o``). The pixel
takes ``a_s`` exactly when ``l_s - l_o > gamma`` (ties: the lower class index, as ``argmax``
breaks them), so over a sorted grid it takes ``a_s`` for the first ``K`` values and ``a_o``
for the rest. Each pixel adds one count to ``pos[K, gt, a_s]`` and one to ``neg[K, gt, a_o]``;
the confusion matrix at the k-th gamma is ``sum_K neg[K] + sum_{K > k} (pos[K] - neg[K])``.
The cost per pixel does not depend on the grid size; the state is two ``(G+1) x N x N``
count arrays.

The default grid is gamma = -20, -19.5, ..., 20. It reaches the plateau on both sides in
practice: a pixel changes its label at gamma = l_s - l_o, and a pixel whose best unseen class
is e^20 (~5e8) times less likely than its best seen class is almost never labelled right by
flipping it. The exact limits are added as the curve's end points: gamma -> -inf (every
pixel takes its best seen class, unseen mIoU 0) and gamma -> +inf (every pixel takes its best
non-seen class, seen mIoU 0).

Metrics (percent, the evaluator's definitions: means over the classes present in the GT):

* ``seen_bias_sweep``: one row per gamma of the grid, ``{bias, mIoU-seen, mIoU-unseen,
  hIoU}``; the row at gamma = 0 is the evaluator's plain mIoU-seen / mIoU-unseen / hIoU.
* ``seen_bias_limits``: the rows of the two end points ("-inf", "+inf").
* ``AUSUC``: area under the seen–unseen mIoU curve, as Chao et al.'s AUSUC for accuracy: the
  points (mIoU-unseen, mIoU-seen) as fractions, in gamma order from the -inf end point through
  the grid to the +inf end point, integrated with the trapezoid rule (``sum (u_{i+1} - u_i)
  (s_i + s_{i+1}) / 2``, the line integral of s du, which is the area under the curve when it
  is monotone), reported x100 (percent of the unit square).
* ``hIoU-best`` / ``seen-bias-best``: the largest hIoU over the grid's gamma >= 0 (the values
  ``MODEL.OV2VSS.SEEN_BIAS`` accepts) and its gamma (the smallest on ties).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .metrics import harmonic_mean, mean

__all__ = ["DEFAULT_SEEN_BIAS_GRID", "SeenBiasSweep", "group_mious", "ausuc"]

# gamma = -20, -19.5, ..., 20 (module docstring: why it reaches the plateau)
DEFAULT_SEEN_BIAS_GRID: Tuple[float, ...] = tuple(float(x) / 2 for x in range(-40, 41))

# pixels buffered before one bincount (bounds the buffer to ~64 MB of indices)
_FLUSH_PIXELS = 4_000_000


def group_mious(
    conf: np.ndarray, seen: Sequence[int], unseen: Sequence[int]
) -> Tuple[float, float, float]:
    """(mIoU-seen, mIoU-unseen, hIoU) in percent of a [GT, prediction] confusion matrix, as
    the evaluator defines them (IoU means over the group's classes present in the GT)."""
    tp = conf.diagonal().astype(np.float64)
    pos_gt = conf.sum(axis=1).astype(np.float64)
    pos_pred = conf.sum(axis=0).astype(np.float64)
    present = pos_gt > 0
    iou = np.full(conf.shape[0], np.nan)
    iou[present] = tp[present] / (pos_gt + pos_pred - tp)[present]
    s = 100 * mean(iou[list(seen)][present[list(seen)]])
    u = 100 * mean(iou[list(unseen)][present[list(unseen)]])
    return s, u, harmonic_mean(s, u)


def ausuc(points: Sequence[Tuple[float, float]]) -> float:
    """Trapezoid area under a seen–unseen curve: ``points`` = (mIoU-seen, mIoU-unseen) in
    percent, in gamma order; returns sum (u_{i+1} - u_i)(s_i + s_{i+1}) / 2 on fractions,
    x100. NaN if a point is NaN."""
    s = np.array([p[0] for p in points], np.float64) / 100
    u = np.array([p[1] for p in points], np.float64) / 100
    if len(points) < 2 or np.isnan(s).any() or np.isnan(u).any():
        return math.nan
    return 100 * float(np.sum((u[1:] - u[:-1]) * (s[1:] + s[:-1]) / 2))


def _runs(ids: Sequence[int]) -> List[Tuple[int, int]]:
    """Sorted class ids as [start, stop) runs of consecutive ids (VSPW: one run per group)."""
    runs: List[Tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _group_max(
    scores: torch.Tensor, runs: Sequence[Tuple[int, int]]
) -> Tuple[np.ndarray, np.ndarray]:
    """Max over a group of classes and its class id (the lowest on ties, as argmax), per
    pixel, as float64 / int64 arrays; reduces views of the scores, never a copy of them."""
    best, arg = None, None
    for start, stop in runs:
        value, index = scores[start:stop].max(dim=0)
        index = index + start
        if best is None:
            best, arg = value, index
        else:  # strictly greater: on ties the earlier (lower) id stays
            better = value > best
            best, arg = torch.where(better, value, best), torch.where(better, index, arg)
    return best.to("cpu", torch.float64).numpy(), arg.cpu().numpy()


class SeenBiasSweep:
    """Confusion matrices of calibrated stacking for a grid of seen biases (module docstring).

    Args:
        num_classes: N, the vocabulary size (scores are [N, H, W]).
        seen_classes: label ids of the seen classes (biased by gamma).
        unseen_classes: label ids of the unseen classes (mIoU-unseen); classes in neither
            list are not biased and enter no group mean.
        biases: the grid of gamma values (finite; sorted and de-duplicated here).
        ignore_label: GT value of pixels that are not scored.

    Usage: :meth:`process` every frame, :meth:`state` / :meth:`merge` to combine processes,
    :meth:`results` for the metrics.
    """

    def __init__(
        self,
        num_classes: int,
        seen_classes: Sequence[int],
        unseen_classes: Sequence[int],
        biases: Sequence[float] = DEFAULT_SEEN_BIAS_GRID,
        ignore_label: int = 255,
    ):
        self.num_classes = int(num_classes)
        self.seen = sorted({int(c) for c in seen_classes})
        self.unseen = sorted({int(c) for c in unseen_classes})
        bad = [c for c in self.seen + self.unseen if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"class ids outside [0, {self.num_classes}): {bad}")
        self.others = sorted(set(range(self.num_classes)) - set(self.seen))
        self._seen_runs, self._other_runs = _runs(self.seen), _runs(self.others)
        if not self.seen or not self.others:
            raise ValueError(
                "the seen-bias sweep needs at least one seen and one other class, got "
                f"seen {self.seen} of {self.num_classes} classes"
            )
        grid = sorted({float(b) for b in biases})
        if not grid or not all(math.isfinite(b) for b in grid):
            raise ValueError(f"seen-bias grid must be non-empty and finite, got {list(biases)}")
        self.biases = np.array(grid, np.float64)
        self.ignore_label = int(ignore_label)
        self.invalid: Optional[str] = None  # why the scores could not be used, if so
        self.reset()

    # ------------------------------------------------------------------ accumulation
    def reset(self) -> None:
        shape = (len(self.biases) + 1, self.num_classes, self.num_classes)
        self._pos = np.zeros(shape, np.int64)
        self._neg = np.zeros(shape, np.int64)
        self._pending: List[Tuple[np.ndarray, np.ndarray]] = []
        self._pending_pixels = 0
        self.invalid = None

    def process(
        self,
        scores: Union[torch.Tensor, np.ndarray],
        gt: np.ndarray,
        *,
        log_probs: bool = False,
    ) -> None:
        """Add one frame.

        Args:
            scores: [N, H, W] class probabilities (or any non-negative scores whose logarithm
                is the calibrated quantity), or log-probabilities with ``log_probs=True``.
            gt: [H, W] label ids, ``ignore_label`` where not scored.

        Probabilities that are negative or NaN cannot be calibrated: the sweep is then marked
        invalid (:attr:`invalid` says why) and :meth:`results` returns None.
        """
        if self.invalid is not None:
            return
        scores = torch.as_tensor(scores)
        if scores.ndim != 3 or scores.shape[0] != self.num_classes:
            raise ValueError(
                f"scores must be [N={self.num_classes}, H, W], got {tuple(scores.shape)}"
            )
        if tuple(scores.shape[1:]) != tuple(gt.shape):
            raise ValueError(
                f"scores {tuple(scores.shape)} and GT {tuple(gt.shape)} differ in size"
            )
        best_s, arg_s = _group_max(scores, self._seen_runs)
        best_o, arg_o = _group_max(scores, self._other_runs)
        if not log_probs:
            # max and min propagate NaN: one reduction each, no copy of the scores
            if np.isnan(best_s).any() or np.isnan(best_o).any() or not scores.min() >= 0:
                self.invalid = "the scores are not probabilities (negative or NaN values)"
                return
            with np.errstate(divide="ignore"):
                best_s, best_o = np.log(best_s), np.log(best_o)
        valid = gt != self.ignore_label
        labels = gt[valid].astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"GT label ids outside [0, {self.num_classes}) and not ignored")
        ls, lo = best_s[valid], best_o[valid]
        a_s, a_o = arg_s[valid], arg_o[valid]
        with np.errstate(invalid="ignore"):
            gap = ls - lo  # the pixel takes a_s for every gamma below the gap
        tie_to_seen = a_s < a_o
        count = np.where(
            tie_to_seen,
            np.searchsorted(self.biases, gap, side="right"),  # gamma <= gap
            np.searchsorted(self.biases, gap, side="left"),  # gamma < gap
        )
        both_minus_inf = np.isnan(gap)  # -inf - -inf: a tie at every gamma
        count[both_minus_inf] = np.where(tie_to_seen[both_minus_inf], len(self.biases), 0)
        n = self.num_classes
        base = (count * n + labels) * n
        self._pending.append((base + a_s, base + a_o))
        self._pending_pixels += labels.size
        if self._pending_pixels >= _FLUSH_PIXELS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        size = self._pos.size
        pos = np.concatenate([p for p, _ in self._pending])
        neg = np.concatenate([q for _, q in self._pending])
        self._pos += np.bincount(pos, minlength=size).reshape(self._pos.shape)
        self._neg += np.bincount(neg, minlength=size).reshape(self._neg.shape)
        self._pending, self._pending_pixels = [], 0

    # ------------------------------------------------------------------ processes
    def state(self) -> Dict[str, Any]:
        """What one process sends to the main one: the counts, sparse (most are zero)."""
        self._flush()
        state: Dict[str, Any] = {"biases": self.biases.tolist(), "invalid": self.invalid}
        for name, counts in (("pos", self._pos), ("neg", self._neg)):
            flat = counts.ravel()
            nonzero = np.flatnonzero(flat)
            state[name] = (nonzero, flat[nonzero])
        return state

    def merge(self, states: Iterable[Dict[str, Any]]) -> None:
        """Add the counts of other processes' :meth:`state` (same grid and classes)."""
        self._flush()
        for state in states:
            if list(state["biases"]) != self.biases.tolist():
                raise ValueError("cannot merge seen-bias sweeps over different grids")
            if state["invalid"] is not None and self.invalid is None:
                self.invalid = state["invalid"]
            for name, counts in (("pos", self._pos), ("neg", self._neg)):
                index, values = state[name]
                np.add.at(counts.reshape(-1), index, values)

    # ------------------------------------------------------------------ metrics
    def confusion_matrices(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """([G, N, N] confusion matrix at every gamma of the grid, the gamma -> -inf matrix,
        the gamma -> +inf matrix); rows GT, columns prediction."""
        self._flush()
        diff = self._pos - self._neg
        # above[j] = sum_{K >= j} diff[K]; the k-th gamma keeps a_s where K > k
        above = diff[::-1].cumsum(axis=0)[::-1]
        all_other = self._neg.sum(axis=0)
        return all_other[None] + above[1:], self._pos.sum(axis=0), all_other

    def results(self) -> Optional[Dict[str, Any]]:
        """The metrics of the module docstring (percent), or None when :attr:`invalid` or no
        pixel was processed."""
        if self.invalid is not None:
            return None
        per_bias, minus_inf, plus_inf = self.confusion_matrices()
        if int(plus_inf.sum()) == 0:
            return None

        def row(conf: np.ndarray) -> Dict[str, float]:
            s, u, h = group_mious(conf, self.seen, self.unseen)
            return {"mIoU-seen": s, "mIoU-unseen": u, "hIoU": h}

        sweep = [dict(bias=float(b), **row(c)) for b, c in zip(self.biases, per_bias)]
        limits = {"-inf": row(minus_inf), "+inf": row(plus_inf)}
        curve = [limits["-inf"]] + sweep + [limits["+inf"]]
        area = ausuc([(p["mIoU-seen"], p["mIoU-unseen"]) for p in curve])
        candidates = [r for r in sweep if r["bias"] >= 0 and not math.isnan(r["hIoU"])]
        best = max(candidates, key=lambda r: (r["hIoU"], -r["bias"])) if candidates else None
        return {
            "seen_bias_sweep": sweep,
            "seen_bias_limits": limits,
            "AUSUC": area,
            "hIoU-best": best["hIoU"] if best else math.nan,
            "seen-bias-best": best["bias"] if best else math.nan,
        }
