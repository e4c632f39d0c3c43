"""The seen–unseen curve: calibrated stacking evaluated for a grid of seen biases at once.

Calibrated stacking (Chao et al., "An empirical study and analysis of generalized zero-shot
learning for object recognition in the wild", ECCV 2016; SPNet's calibration for zero-shot
segmentation) labels a pixel with ``argmax_c (log p_c - gamma * [c is seen])``: gamma > 0
moves pixels from seen to unseen classes, gamma < 0 the other way. docs/METRICS.md explains
how to read the curve; ``MODEL.OV2VSS.SEEN_BIAS`` applies one gamma at inference.

Two notions must not be mixed up (docs/METRICS.md, "Seen-class calibration"): the classes the
sweep *biases* are those calibration biases (the model's training vocabulary,
``biased_classes``), while ``mIoU-seen`` / ``mIoU-unseen`` average over the dataset's groups
(``seen_classes`` / ``unseen_classes``).

The gammas are absolute: the scores may already be calibrated by the model with
``applied_bias`` (its SEEN_BIAS), so the row at gamma applies ``gamma - applied_bias`` to them,
and the row at the model's own gamma is the plain result (the grid always holds it).

:class:`SeenBiasSweep` accumulates, from the probabilities the evaluator already receives,
the IoU counts of every gamma of a grid — without a second forward pass and without storing
per-pixel scores. Per pixel only two candidates exist for any gamma: the best biased class
``a_s`` (log-probability ``l_s``) and the best other class ``a_o`` (``l_o``). The pixel takes
``a_s`` exactly when ``l_s - l_o > gamma - applied_bias`` (ties: the lower class index, as
``argmax`` breaks them), so over a sorted grid it takes ``a_s`` for the first ``K`` values and
``a_o`` for the rest. Every IoU needs, per gamma and class, only the true positives and the
predicted count (the ground-truth count does not depend on gamma); so each pixel adds one to
``pred_s[K, a_s]`` and ``pred_o[K, a_o]``, and one to ``tp_s[K, a_s]`` / ``tp_o[K, a_o]`` when
that candidate is its ground truth. At the k-th gamma a count is ``sum_{K > k} (.)_s[K] +
sum_{K <= k} (.)_o[K]``. The state is four ``(G+1) x N`` arrays and the ground-truth counts
(82 x 1000 names: 2.6 MB), whatever the vocabulary size.

The default grid is gamma = -20, -19.5, ..., 20. It reaches the plateau on both sides in
practice: a pixel changes its label at gamma = l_s - l_o, and a pixel whose best unseen class
is e^20 (~5e8) times less likely than its best seen class is almost never labelled right by
flipping it. The exact limits are added as the curve's end points: gamma -> -inf (every
pixel takes its best biased class) and gamma -> +inf (every pixel takes its best other class).

Metrics (percent, the evaluator's definitions: means over the classes present in the GT):

* ``seen_bias_sweep``: one row per gamma of the grid, ``{bias, mIoU-seen, mIoU-unseen,
  hIoU}``; the row at gamma = ``seen_bias_applied`` is the evaluator's plain mIoU-seen /
  mIoU-unseen / hIoU.
* ``seen_bias_applied``: the gamma the model applied to the scores (0: none).
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

_COUNTS = ("pred_s", "tp_s", "pred_o", "tp_o")


def _group_mious(
    tp: np.ndarray, gt: np.ndarray, pred: np.ndarray, seen: Sequence[int], unseen: Sequence[int]
) -> Tuple[float, float, float]:
    """(mIoU-seen, mIoU-unseen, hIoU) in percent from per-class true positives, GT and
    predicted counts (IoU = tp / (gt + pred - tp), means over the group's classes in the GT)."""
    tp, gt, pred = (np.asarray(x, np.float64) for x in (tp, gt, pred))
    present = gt > 0
    iou = np.full(gt.shape[0], np.nan)
    iou[present] = tp[present] / (gt + pred - tp)[present]
    s = 100 * mean(iou[list(seen)][present[list(seen)]])
    u = 100 * mean(iou[list(unseen)][present[list(unseen)]])
    return s, u, harmonic_mean(s, u)


def group_mious(
    conf: np.ndarray, seen: Sequence[int], unseen: Sequence[int]
) -> Tuple[float, float, float]:
    """(mIoU-seen, mIoU-unseen, hIoU) in percent of a [GT, prediction] confusion matrix, as
    the evaluator defines them (IoU means over the group's classes present in the GT)."""
    return _group_mious(conf.diagonal(), conf.sum(axis=1), conf.sum(axis=0), seen, unseen)


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
    """IoU counts of calibrated stacking for a grid of seen biases (module docstring).

    Args:
        num_classes: N, the vocabulary size (scores are [N, H, W]).
        seen_classes / unseen_classes: label ids of the groups averaged into mIoU-seen /
            mIoU-unseen (classes in neither enter no group mean).
        biases: the grid of absolute gamma values (finite; sorted and de-duplicated here,
            ``applied_bias`` added).
        ignore_label: GT value of pixels that are not scored.
        biased_classes: label ids of the classes calibration lowers by gamma (the model's
            training vocabulary); None: ``seen_classes``.
        applied_bias: the gamma the model already subtracted from the biased classes of the
            scores it gives (its MODEL.OV2VSS.SEEN_BIAS); rows stay absolute.

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
        *,
        biased_classes: Optional[Sequence[int]] = None,
        applied_bias: float = 0.0,
    ):
        self.num_classes = int(num_classes)
        self.seen = sorted({int(c) for c in seen_classes})
        self.unseen = sorted({int(c) for c in unseen_classes})
        biased = self.seen if biased_classes is None else biased_classes
        self.biased = sorted({int(c) for c in biased})
        bad = [c for c in self.seen + self.unseen + self.biased if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"class ids outside [0, {self.num_classes}): {bad}")
        self.others = sorted(set(range(self.num_classes)) - set(self.biased))
        self._biased_runs, self._other_runs = _runs(self.biased), _runs(self.others)
        if not self.biased or not self.others:
            raise ValueError(
                "the seen-bias sweep needs at least one biased (seen) and one other class, got "
                f"biased classes {self.biased} of {self.num_classes}"
            )
        self.applied_bias = float(applied_bias)
        grid = sorted({float(b) for b in biases} | {self.applied_bias})
        if not all(math.isfinite(b) for b in grid):
            raise ValueError(f"seen-bias grid must be finite, got {list(biases)}, {applied_bias}")
        self.biases = np.array(grid, np.float64)
        # what each gamma still applies to the scores, which carry applied_bias already
        self._offsets = self.biases - self.applied_bias
        self.ignore_label = int(ignore_label)
        self.invalid: Optional[str] = None  # why the scores could not be used, if so
        self.reset()

    # ------------------------------------------------------------------ accumulation
    def reset(self) -> None:
        shape = (len(self.biases) + 1, self.num_classes)
        self._counts = {name: np.zeros(shape, np.int64) for name in _COUNTS}
        self._gt = np.zeros(self.num_classes, np.int64)
        self.invalid = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulated state (independent of the number of pixels)."""
        return sum(c.nbytes for c in self._counts.values()) + self._gt.nbytes

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
        best_s, arg_s = _group_max(scores, self._biased_runs)
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
            gap = ls - lo  # the pixel takes a_s for every offset below the gap
        tie_to_seen = a_s < a_o
        count = np.where(
            tie_to_seen,
            np.searchsorted(self._offsets, gap, side="right"),  # offset <= gap
            np.searchsorted(self._offsets, gap, side="left"),  # offset < gap
        )
        both_minus_inf = np.isnan(gap)  # -inf - -inf: a tie at every gamma
        count[both_minus_inf] = np.where(tie_to_seen[both_minus_inf], len(self.biases), 0)
        n, size = self.num_classes, self._counts["pred_s"].size
        shape = self._counts["pred_s"].shape
        for name, candidate in (("s", a_s), ("o", a_o)):
            index = count * n + candidate
            self._counts[f"pred_{name}"] += np.bincount(index, minlength=size).reshape(shape)
            hit = index[candidate == labels]
            self._counts[f"tp_{name}"] += np.bincount(hit, minlength=size).reshape(shape)
        self._gt += np.bincount(labels, minlength=n)

    # ------------------------------------------------------------------ processes
    def state(self) -> Dict[str, Any]:
        """What one process sends to the main one: the grid and the counts."""
        state: Dict[str, Any] = {
            "biases": self.biases.tolist(),
            "applied_bias": self.applied_bias,
            "biased": list(self.biased),
            "invalid": self.invalid,
            "gt": self._gt,
        }
        state.update(self._counts)
        return state

    def merge(self, states: Iterable[Dict[str, Any]]) -> None:
        """Add the counts of other processes' :meth:`state` (same grid and classes)."""
        for state in states:
            if (
                list(state["biases"]) != self.biases.tolist()
                or state["applied_bias"] != self.applied_bias
                or list(state["biased"]) != self.biased
            ):
                raise ValueError(
                    "cannot merge seen-bias sweeps over different grids or biased classes"
                )
            if state["invalid"] is not None and self.invalid is None:
                self.invalid = state["invalid"]
            for name in _COUNTS:
                self._counts[name] += state[name]
            self._gt += state["gt"]

    # ------------------------------------------------------------------ metrics
    def _at_every_gamma(self, name: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Count ``name`` ("pred" or "tp") per class at every gamma of the grid [G, N], at
        gamma -> -inf (every pixel its best biased class) and at +inf (its best other)."""
        s, o = self._counts[f"{name}_s"], self._counts[f"{name}_o"]
        # the k-th gamma: a_s where K > k, a_o where K <= k
        below_s, below_o = s.cumsum(axis=0), o.cumsum(axis=0)
        per_gamma = (below_s[-1] - below_s[:-1]) + below_o[:-1]
        return per_gamma, below_s[-1], below_o[-1]

    def results(self) -> Optional[Dict[str, Any]]:
        """The metrics of the module docstring (percent), or None when :attr:`invalid` or no
        pixel was processed."""
        if self.invalid is not None or int(self._gt.sum()) == 0:
            return None
        pred, pred_minus, pred_plus = self._at_every_gamma("pred")
        tp, tp_minus, tp_plus = self._at_every_gamma("tp")

        def row(t: np.ndarray, p: np.ndarray) -> Dict[str, float]:
            s, u, h = _group_mious(t, self._gt, p, self.seen, self.unseen)
            return {"mIoU-seen": s, "mIoU-unseen": u, "hIoU": h}

        sweep = [dict(bias=float(b), **row(t, p)) for b, t, p in zip(self.biases, tp, pred)]
        limits = {"-inf": row(tp_minus, pred_minus), "+inf": row(tp_plus, pred_plus)}
        curve = [limits["-inf"]] + sweep + [limits["+inf"]]
        area = ausuc([(p["mIoU-seen"], p["mIoU-unseen"]) for p in curve])
        candidates = [r for r in sweep if r["bias"] >= 0 and not math.isnan(r["hIoU"])]
        best = max(candidates, key=lambda r: (r["hIoU"], -r["bias"])) if candidates else None
        return {
            "seen_bias_sweep": sweep,
            "seen_bias_applied": self.applied_bias,
            "seen_bias_limits": limits,
            "AUSUC": area,
            "hIoU-best": best["hIoU"] if best else math.nan,
            "seen-bias-best": best["bias"] if best else math.nan,
        }
