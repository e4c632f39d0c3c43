"""A PNG report beside each ``metrics.json``: per-class IoU, and the seen–unseen curve.

Left: the IoU of every class present in the ground truth as horizontal bars, best on top,
seen and unseen classes in two colours, with the group means as dashed lines (the figure
grows with the number of classes, so VSPW's 124 names stay readable). Right, where the
evaluator ran the seen-bias sweep (:mod:`ov2vss.evaluation.seen_bias`): the seen–unseen mIoU
curve with its AUSUC, and mIoU-seen / mIoU-unseen / hIoU against the absolute seen bias gamma
(the evaluated model's own gamma marked).

Drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global backend
change), so it works on headless machines whatever ``MPLBACKEND`` says. The evaluator only
writes ``metrics.json``; whoever runs it draws the report (:func:`write_evaluation_reports`,
as ``Trainer.test`` does).
"""

from __future__ import annotations

import io
import logging
import math
import os
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:  # numpy is imported where it is used
    import numpy as np

__all__ = [
    "write_report",
    "write_evaluation_reports",
    "figure_size",
    "compose_strip",
    "DPI",
    "SEEN_COLOR",
    "UNSEEN_COLOR",
]

logger = logging.getLogger(__name__)

SEEN_COLOR = "#1f77b4"  # blue
UNSEEN_COLOR = "#ff7f0e"  # orange
OTHER_COLOR = "#7f7f7f"  # classes in neither group

_ROW_INCHES = 0.2  # height of one class bar
_SWEEP_INCHES = 6.5  # width of the column of sweep panels
DPI = 100


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _fmt(x: Any) -> str:
    return f"{x:.1f}" if _finite(x) else "-"


def figure_size(num_bars: int, longest_name: int, with_sweep: bool) -> Tuple[float, float]:
    """(width, height) in inches of a report with ``num_bars`` classes whose longest name has
    ``longest_name`` characters; the PNG is that times :data:`DPI` pixels."""
    bars_height = max(3.0, _ROW_INCHES * max(1, num_bars) + 1.6)
    bars_width = 4.5 + 0.065 * longest_name
    if with_sweep:
        return bars_width + _SWEEP_INCHES, max(bars_height, 10.5)  # two 3.6 in panels
    return bars_width, bars_height


def write_report(
    path: str,
    metrics: Mapping[str, Any],
    class_names: Sequence[str],
    seen_classes: Sequence[int] = (),
    unseen_classes: Sequence[int] = (),
    sweep: Optional[Mapping[str, Any]] = None,
    title: str = "",
) -> str:
    """Draw the report and write it as PNG to ``path`` (through detectron2's PathManager).

    Args:
        metrics: the evaluator's ``sem_seg`` results (percent): ``IoU-<name>`` per class (NaN
            or None = absent from the GT, not drawn), ``mIoU`` and, where present,
            ``mIoU-seen``, ``mIoU-unseen``, ``hIoU``, ``pACC``.
        class_names: the vocabulary, in label order.
        seen_classes / unseen_classes: label ids of the two groups (colours).
        sweep: :meth:`SeenBiasSweep.results` (None: no curve panels).
        title: e.g. the dataset name.

    Returns:
        ``path``.
    """
    from detectron2.utils.file_io import PathManager
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    seen, unseen = set(int(c) for c in seen_classes), set(int(c) for c in unseen_classes)
    rows = []
    for i, name in enumerate(class_names):
        value = metrics.get(f"IoU-{name}")
        if _finite(value):
            rows.append((float(value), i, name))
    rows.sort(key=lambda r: (-r[0], r[1]))  # best first (drawn on top)
    absent = len(class_names) - len(rows)

    has_sweep = bool(sweep) and bool(sweep.get("seen_bias_sweep"))
    longest = max((len(n) for _, _, n in rows), default=10)
    width, height = figure_size(len(rows), longest, has_sweep)
    bars_width = width - (_SWEEP_INCHES if has_sweep else 0.0)
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)

    summary = ", ".join(
        f"{k} {_fmt(metrics.get(k))}"
        for k in ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU", "pACC")
        if k in metrics
    )
    fig.suptitle(f"{title}\n{summary}" if title else summary, fontsize=11)
    top = 1 - 0.75 / height  # below the two-line title, in figure fractions
    bars_right = bars_width / width
    ax = fig.add_axes(
        [
            (0.3 + 0.075 * longest) / width,  # left margin fits the longest name
            0.5 / height,
            bars_right - (0.3 + 0.075 * longest) / width - 0.35 / width,
            top - 0.5 / height - 0.45 / height,  # room for the legend above the bars
        ]
    )

    def color(i: int) -> str:
        return SEEN_COLOR if i in seen else UNSEEN_COLOR if i in unseen else OTHER_COLOR

    y = list(range(len(rows)))
    ax.barh(y, [r[0] for r in rows], color=[color(r[1]) for r in rows], height=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([r[2] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    for yi, (value, _, _) in zip(y, rows):
        ax.text(value + 1, yi, f"{value:.1f}", va="center", fontsize=7)
    handles = []
    for label, group, c in (("seen", seen, SEEN_COLOR), ("unseen", unseen, UNSEEN_COLOR)):
        mean = metrics.get(f"mIoU-{label}")
        if group and _finite(mean):
            ax.axvline(mean, color=c, linestyle="--", linewidth=1)
        if any(r[1] in group for r in rows):
            handles.append(Patch(color=c, label=f"{label} (mean {_fmt(mean)})"))
    if any(r[1] not in seen | unseen for r in rows):
        handles.append(Patch(color=OTHER_COLOR, label="other"))
    if handles:  # above the bars, where it hides none of them
        ax.legend(
            handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, fontsize=8,
            frameon=False, borderaxespad=0.2,
        )  # fmt: skip
    note = f"; {absent} absent from the GT, not shown" if absent else ""
    ax.set_xlabel(f"IoU (%) of the {len(rows)} classes in the GT{note}", fontsize=9)

    if has_sweep:
        _draw_sweep(fig, sweep, bars_right, width, height, top)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    with PathManager.open(path, "wb") as f:
        f.write(buffer.getvalue())
    return path


def write_evaluation_reports(evaluator: Any) -> List[str]:
    """``report.png`` beside the ``metrics.json`` that ``evaluator`` (a
    :class:`~ov2vss.evaluation.VideoSemSegEvaluator`, or a list or detectron2's
    ``DatasetEvaluators`` of evaluators) wrote in its last ``evaluate()``; evaluators that
    wrote none are skipped.
    A picture that cannot be drawn is a warning: the metrics are written already.

    Returns:
        the paths written.
    """
    written = []
    if isinstance(evaluator, (list, tuple)):
        evaluators = list(evaluator)
    else:  # DatasetEvaluators keeps its evaluators in a private list
        evaluators = getattr(evaluator, "_evaluators", None) or [evaluator]
    for ev in evaluators:
        metrics_file = getattr(ev, "metrics_file", None)
        if not metrics_file:
            continue
        path = os.path.join(os.path.dirname(metrics_file), "report.png")
        try:
            write_report(
                path,
                ev.results,
                ev.class_names,
                ev.seen_classes,
                ev.unseen_classes,
                ev.sweep_results,
                ev.dataset_name,
            )
        except Exception as e:  # noqa: BLE001  (matplotlib / file errors: the report only)
            logger.warning(f"could not write the PNG report {path}: {e!r}")
            continue
        written.append(path)
    return written


def _draw_sweep(fig, sweep: Mapping[str, Any], left: float, width: float, height: float, top):
    """The seen–unseen curve and the metrics against gamma, in the right column."""
    rows = list(sweep["seen_bias_sweep"])
    limits = sweep.get("seen_bias_limits") or {}
    best_bias = sweep.get("seen-bias-best")
    panel_h = 3.6 / height
    x0, w = left + 0.9 / width, 1 - left - 1.2 / width

    def point(r: Mapping[str, Any]):
        return r.get("mIoU-unseen"), r.get("mIoU-seen")

    curve = [limits["-inf"]] if "-inf" in limits else []
    curve += rows + ([limits["+inf"]] if "+inf" in limits else [])
    ax = fig.add_axes([x0, top - panel_h - 0.45 / height, w, panel_h])
    xs, ys = zip(*[point(r) for r in curve])
    ax.plot(xs, ys, "-", color="#444444", linewidth=1.2, marker=".", markersize=3)
    applied = sweep.get("seen_bias_applied", 0.0)  # the evaluated model's own gamma
    own = [r for r in rows if r["bias"] == applied]
    if own:
        label = f"this evaluation (gamma = {applied:g})"
        ax.plot(*point(own[0]), "o", color=SEEN_COLOR, markersize=7, label=label)
    best = [r for r in rows if _finite(best_bias) and r["bias"] == best_bias]
    if best:
        ax.plot(
            *point(best[0]),
            "*",
            color=UNSEEN_COLOR,
            markersize=13,
            label=f"best hIoU {_fmt(best[0]['hIoU'])} at gamma = {best_bias:g}",
        )
    ax.set_xlabel("mIoU-unseen (%)", fontsize=9)
    ax.set_ylabel("mIoU-seen (%)", fontsize=9)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(
        f"seen-unseen curve (gamma from -inf to +inf), AUSUC {_fmt(sweep.get('AUSUC'))}",
        fontsize=9,
    )

    ax2 = fig.add_axes([x0, top - 2 * panel_h - 1.45 / height, w, panel_h])
    biases = [r["bias"] for r in rows]
    for key, c, style in (
        ("mIoU-seen", SEEN_COLOR, "-"),
        ("mIoU-unseen", UNSEEN_COLOR, "-"),
        ("hIoU", "#2ca02c", "-"),
    ):
        values = [r[key] if _finite(r[key]) else math.nan for r in rows]
        ax2.plot(biases, values, style, color=c, linewidth=1.5, label=key)
    ax2.axvline(applied, color="#999999", linewidth=0.8)
    if best:
        ax2.axvline(best_bias, color="#2ca02c", linestyle="--", linewidth=1)
    ax2.set_xlabel(
        "seen bias gamma, absolute (MODEL.OV2VSS.SEEN_BIAS; grey line: this evaluation's)",
        fontsize=9,
    )
    ax2.set_ylabel("%", fontsize=9)
    ax2.set_ylim(bottom=0)
    ax2.tick_params(labelsize=8)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="upper left")
    ax2.set_title("calibrated stacking: metrics against gamma", fontsize=9)


def compose_strip(
    rows: Sequence[Sequence["np.ndarray"]], column_titles: Sequence[str], gap: int = 4
) -> "np.ndarray":
    """Tile RGB uint8 panels into one picture: ``rows[i][j]`` is row i, column j (panels of a
    column share a width, panels of a row share a height), white gaps between them and a
    title band above every column."""
    import cv2
    import numpy as np

    if not rows or not rows[0]:
        raise ValueError("compose_strip needs at least one panel")
    cols = len(rows[0])
    if len(column_titles) != cols or any(len(r) != cols for r in rows):
        raise ValueError(f"every row needs {len(column_titles)} panels (one per column title)")
    widths = [p.shape[1] for p in rows[0]]
    heights = [r[0].shape[0] for r in rows]
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            if panel.shape[:2] != (heights[i], widths[j]):
                raise ValueError(
                    f"panel ({i}, {j}) is {panel.shape[:2]}, expected {(heights[i], widths[j])}"
                )
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    scale = max(0.4, min(0.7, min(widths) / 500))
    band = int(cv2.getTextSize("Ag", font, scale, thickness)[0][1] * 2.4) + gap
    xs = np.cumsum([0] + [w + gap for w in widths])
    ys = band + np.cumsum([0] + [h + gap for h in heights])
    out = np.full((ys[-1] - gap, xs[-1] - gap, 3), 255, np.uint8)
    for j, title in enumerate(column_titles):
        tw = cv2.getTextSize(title, font, scale, thickness)[0][0]
        x = int(xs[j]) + max(0, (widths[j] - tw) // 2)
        cv2.putText(out, title, (x, band - gap - 6), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            out[ys[i] : ys[i] + heights[i], xs[j] : xs[j] + widths[j]] = panel
    return out
