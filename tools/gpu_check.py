#!/usr/bin/env python
"""GPU check of OV2VSS: training speed and memory with and without mixed precision, and
evaluation throughput streaming vs window by window (docs/GETTING_STARTED.md, "The GPU check").

On a CUDA machine (``bash tools/gpu_check.sh``): configs/vspw/ov2vss_R50.yaml (R-50 +
ViT-B-16) with random weights (MODEL.WEIGHTS "", MODEL.CLIP.PRETRAINED ""), on VSPW-layout
data generated here at the real frame size (480 x 853, VSPW class ids, label maps written by
``prepare_vspw``, registered as ``vspw_*`` at a temporary root):

* training: ``--iters`` (30) iterations, batch 4, crop 480, SOLVER.AMP.ENABLED False and True;
  seconds per iteration (after ``--warmup`` iterations) and peak GPU memory
  (``torch.cuda.max_memory_allocated``), beside the peak that docs/BENCHMARKS.md estimates
  from one- and two-window steps measured on CPU (``ov2vss.engine.training_cost``);
* evaluation: one ``--eval-frames`` (40) frame video, ``Trainer.test`` with TEST.STREAMING True
  and False; frames per second, peak GPU memory, and the largest metric difference between
  the two modes.

``--cpu --tiny`` is a dry run on CPU: the tiny config, 48 x 64 frames, 3 iterations, a 6-frame
video (well under a minute); AMP on CPU is bfloat16 autocast. Prints one table.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run sizes: the real one, and the CPU dry run (--cpu --tiny). Columns: config, frame size,
# timed iterations, untimed warm-up iterations, batch, frames of the evaluation video, number
# of training videos and frames per training video.
PRESET_FIELDS = "config size iters warmup batch eval_frames train_videos train_frames".split()
PRESETS = {
    "full": ("configs/vspw/ov2vss_R50.yaml", (480, 853), 30, 5, 4, 40, 4, 8),
    "tiny": ("configs/toy/ov2vss_tiny_cpu.yaml", (48, 64), 3, 1, 2, 6, 2, 4),
}


def preset_for(tiny: bool) -> Dict[str, object]:
    """The run sizes of the full check or of the CPU dry run, as a dict (plus ``tiny``)."""
    preset = dict(zip(PRESET_FIELDS, PRESETS["tiny" if tiny else "full"]))
    preset["tiny"] = tiny
    return preset


class _StepTimer:
    """A trainer hook: wall time of every iteration (CUDA synchronised)."""

    def __init__(self, sync):
        from detectron2.engine import HookBase

        timer = self

        class Hook(HookBase):
            def before_step(self):
                sync()
                timer._start = time.perf_counter()

            def after_step(self):
                sync()
                timer.times.append(time.perf_counter() - timer._start)

        self.times: List[float] = []
        self._start = 0.0
        self.hook = Hook()


def _cfg(preset: dict, device: str, out: str, extra: List[str]):
    from ov2vss.config import get_ov2vss_cfg

    h, w = preset["size"]
    opts = [
        "MODEL.WEIGHTS", "", "MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE", device,
        "DATASETS.TRAIN", ("vspw_train_seen",), "DATASETS.TEST", ("vspw_val_unseen",),
        "SOLVER.IMS_PER_BATCH", preset["batch"], "SOLVER.MAX_ITER", preset["iters"],
        "SOLVER.CHECKPOINT_PERIOD", 10**9, "TEST.EVAL_PERIOD", 0, "OUTPUT_DIR", out,
        "INPUT.MIN_SIZE_TEST", h, "INPUT.MAX_SIZE_TEST", 4 * w,
    ]  # fmt: skip
    if preset["tiny"]:
        opts += [
            "INPUT.MIN_SIZE_TRAIN", (h, h + 8), "INPUT.MAX_SIZE_TRAIN", 4 * w,
            "INPUT.CROP.SIZE", (h, w), "MODEL.CLIP.INPUT_SIZE", 32, "DATALOADER.NUM_WORKERS", 0,
        ]  # fmt: skip
    else:
        opts += ["INPUT.CROP.SIZE", (480, 480)]
    return get_ov2vss_cfg(os.path.join(REPO, preset["config"]), opts + extra)


def measure_training(preset: dict, device: str, out: str, amp: bool) -> Dict[str, float]:
    import torch

    from ov2vss.engine import Trainer

    cfg = _cfg(preset, device, out, ["SOLVER.AMP.ENABLED", amp, "DATASETS.TEST", ()])
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    timer = _StepTimer(sync)
    trainer.register_hooks([timer.hook])
    trainer.train()
    steady = timer.times[preset["warmup"] :] or timer.times
    result = {
        "s_iter": sum(steady) / len(steady),
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else math.nan,
    }
    del trainer
    gc.collect()
    result["estimate_mib"] = estimate_training_peak_mib(preset, out, amp)
    return result


def estimate_training_peak_mib(preset: dict, out: str, amp: bool) -> float:
    """The peak that docs/BENCHMARKS.md estimates for this training run: steps of one and two
    windows at the full crop measured on CPU (fp32, or bf16 autocast standing for fp16), their
    activations scaled to the batch, plus parameters, gradients and AdamW's states
    (ov2vss.engine.training_cost)."""
    from ov2vss.engine.training_cost import (
        activation_scaling,
        estimate_peak_bytes,
        measure_config_step,
    )

    cfg = _cfg(preset, "cpu", out, ["SOLVER.AMP.ENABLED", amp, "DATASETS.TEST", ()])
    (one, two), model = measure_config_step(cfg, cfg.INPUT.CROP.SIZE, amp, windows=(1, 2))
    del model
    gc.collect()
    per_window, constant = activation_scaling(one, two)
    peak = estimate_peak_bytes(
        one.param_bytes, one.trainable_bytes, per_window, preset["batch"], constant
    )
    return peak / 2**20


def measure_evaluation(preset: dict, device: str, out: str) -> Dict[str, Dict[str, float]]:
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ov2vss.engine import Trainer

    cfg = _cfg(preset, device, out, [])
    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).eval()
    name = cfg.DATASETS.TEST[0]
    records = DatasetCatalog.get(name)
    warm = name + "_warmup"  # the first 2 frames: first allocations, text embeddings
    DatasetCatalog.register(warm, lambda: [dict(r) for r in records[:2]])
    meta = {k: v for k, v in MetadataCatalog.get(name).as_dict().items() if k != "name"}
    MetadataCatalog.get(warm).set(**meta)

    def evaluate(dataset: str, streaming: bool):
        run = cfg.clone()
        run.defrost()
        run.DATASETS.TEST = (dataset,)
        run.TEST.STREAMING = streaming
        return Trainer.test(run, model)["sem_seg"]

    results, metrics = {}, {}
    for streaming in (False, True):
        evaluate(warm, streaming)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics[streaming] = evaluate(name, streaming)
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        results["streaming" if streaming else "window-by-window"] = {
            "fps": len(records) / elapsed,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else math.nan,
        }
    diffs = [
        abs(metrics[True][k] - metrics[False][k])
        for k in metrics[True]
        if not (math.isnan(metrics[True][k]) or math.isnan(metrics[False][k]))
    ]
    results["streaming"]["max_diff"] = max(diffs)
    return results


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on CPU (dry run)")
    parser.add_argument("--tiny", action="store_true", help="tiny config, small frames, few iters")
    parser.add_argument("--iters", type=int, help="training iterations per setting")
    parser.add_argument("--eval-frames", type=int, help="frames of the evaluated video")
    parser.add_argument("--keep", help="write the data and outputs here and keep them")
    args = parser.parse_args(argv)

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device visible; run it on a GPU machine, or pass --cpu "
            "(with --tiny for a dry run)",
            file=sys.stderr,
        )
        return 2
    preset = preset_for(args.tiny)
    preset["iters"] = args.iters or preset["iters"]
    preset["eval_frames"] = args.eval_frames or preset["eval_frames"]
    preset["warmup"] = min(preset["warmup"], preset["iters"] - 1)
    device = "cpu" if args.cpu else "cuda"

    import ov2vss  # noqa: F401  (registers the model and the datasets)
    from ov2vss.data.datasets.register_vspw import register_vspw_family
    from ov2vss.data.synthetic_vspw import write_synthetic_vspw
    from ov2vss.data.vspw_classes import VSPW_NUM_SEEN, get_vspw_class_names

    # the console shows the table only (Trainer sets up detectron2's logging only when unset);
    # failures raise
    for name in ("detectron2", "ov2vss"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logger.addHandler(logging.NullHandler())
    work = args.keep or tempfile.mkdtemp(prefix="ov2vss_gpu_check_")
    try:
        root = os.path.join(work, "VSPW_480p")
        videos = {
            f"train_{i}": ("train", preset["train_frames"]) for i in range(preset["train_videos"])
        }
        videos["val_0"] = ("val", preset["eval_frames"])
        start = time.perf_counter()
        write_synthetic_vspw(root, videos, preset["size"])
        register_vspw_family(
            "vspw", root, get_vspw_class_names(), VSPW_NUM_SEEN, ("train", "val"), overwrite=True
        )
        data_s = time.perf_counter() - start
        train = {
            amp: measure_training(preset, device, os.path.join(work, f"train_amp{int(amp)}"), amp)
            for amp in (False, True)
        }
        evals = measure_evaluation(preset, device, os.path.join(work, "eval"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    h, w = preset["size"]
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (dry run)"
    print(
        f"OV2VSS GPU check: {gpu}, torch {torch.__version__}, {preset['config']}, random weights, "
        f"frames {h}x{w}, data written in {data_s:.0f} s"
    )
    amp_name = "AMP fp16" if device == "cuda" else "AMP bf16"
    rows = [["phase", "setting", "s/iter", "frames/s", "peak GPU MiB", "estimate MiB", "note"]]
    for amp, r in train.items():
        rows.append([
            "train", amp_name if amp else "fp32", _fmt(r["s_iter"], ".3f"), "",
            _fmt(r["peak_mib"], ".0f"), _fmt(r["estimate_mib"], ".0f"),
            f"{preset['iters']} iters (first {preset['warmup']} not timed), batch {preset['batch']}",
        ])  # fmt: skip
    for mode, r in evals.items():
        note = f"{preset['eval_frames']}-frame video"
        if "max_diff" in r:
            note += f"; metrics differ from window-by-window by <= {r['max_diff']:.2g}"
        rows.append(["eval", mode, "", _fmt(r["fps"], ".2f"), _fmt(r["peak_mib"], ".0f"), "", note])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if i == 0:
            print("-+-".join("-" * width for width in widths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
