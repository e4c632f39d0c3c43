#!/usr/bin/env python
"""FLOPs, time and the GPU memory of one OV2VSS training step, measured on CPU
(docs/BENCHMARKS.md, "Training step: what a GPU needs").

For each VSPW config: one window (the 4 frames t-9, t-6, t-3, t plus the random frame) at the
paper's crop 480 x 480, the 80 seen VSPW names of training, random labels, random weights
(MODEL.WEIGHTS "" and MODEL.CLIP.PRETRAINED "", nothing is downloaded), one forward + backward
pass and one AdamW step, in fp32 and under bf16 autocast (bf16 on CPU stands for fp16 on GPU:
the same bytes); the SAM configs also with MODEL.SAM_VIT.USE_ACT_CHECKPOINT. Each setting runs
in its own process. The frozen text tower's embeddings are cached in training (computed once
per vocabulary), so random unit vectors stand in for them here.

Measured (ov2vss.engine.training_cost.measure_training_step): forward and backward FLOPs,
wall and CPU time, parameter / trainable bytes, and the CPU allocator's peak above the model
state (activations) with one window and, in a second step, two: they give the bytes per
window and a constant part (activation_scaling). Derived, in a second table: the windows per
GPU that fit 24, 40 and 80 GB cards and the lower bound on s/iter at batch 4 on an A100 and an
H100 at UTILISATION of the tensor-core peak (fp32: of the fp32 peak), against the paper's
0.72 s/iter on an RTX 3090. ``--json`` writes the rows (bench_loader.py reads them).

    python benchmarks/bench_train_step.py [--configs a.yaml ...] [--threads N] [--json PATH]
    python benchmarks/bench_train_step.py --from-json PATH   # reprint an earlier run's tables
    python benchmarks/bench_train_step.py --quick   # tiny config, 32 x 32 crop, in-process
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional

# benchmarks/ is this script's directory, hence on sys.path when it runs
from common import REPO, VSPW_CONFIGS, print_table, run_worker

QUICK_CONFIG = "configs/toy/ov2vss_tiny_cpu.yaml"
CROP, QUICK_CROP = 480, 32
JSON_PATH = os.path.join(REPO, "output", "benchmarks", "bench_train_step.json")
GIB = 2**30
BATCH = 4  # windows per iteration (the paper's batch)
UTILISATION = 0.4  # assumed fraction of the peak FLOP rate a training step reaches
# dense peak TFLOPS: (fp16/bf16 tensor cores, fp32); the A100 and H100 SXM data sheets,
# the RTX 3090's fp16 tensor rate with fp16 accumulation
PEAK_TFLOPS = {"A100": (312.0, 19.5), "H100": (989.0, 67.0), "RTX 3090": (71.0, 35.6)}
PAPER_S_ITER = 0.72  # the paper: one RTX 3090, batch 4
# the memory torch sees on a 24 GB (RTX 3090 / 4090), 40 GB and 80 GB (A100 / H100) card
CARDS_GIB = {"24 GB": 23.7, "40 GB": 39.5, "80 GB": 79.2}


def settings(config: str) -> List[Dict]:
    """(precision, activation checkpointing) of a config: fp32 and AMP, x ckpt for SAM."""
    ckpts = (False, True) if "sam_vitb" in config else (False,)
    return [{"amp": amp, "ckpt": ckpt} for ckpt in ckpts for amp in (False, True)]


def measure(config: str, amp: bool, ckpt: bool, quick: bool = False) -> Dict:
    """One training step of ``config`` (see the module docstring); a dict of numbers."""
    import time

    import ov2vss  # noqa: F401  (registers the model and the datasets)
    from ov2vss.config import get_ov2vss_cfg
    from ov2vss.engine.training_cost import measure_config_step
    from ov2vss.solver import build_optimizer

    opts = ["MODEL.WEIGHTS", "", "MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu"]
    opts += ["DATASETS.TRAIN", ("vspw_train_seen",)]  # the 80 seen names
    if ckpt:
        opts += ["MODEL.SAM_VIT.USE_ACT_CHECKPOINT", True]
    cfg = get_ov2vss_cfg(os.path.join(REPO, config), opts)
    crop = QUICK_CROP if quick else CROP
    (one, two), model = measure_config_step(cfg, (crop, crop), amp, windows=(1, 2))
    optimizer = build_optimizer(cfg, model)
    start = time.perf_counter()
    optimizer.step()  # the first step also creates AdamW's states
    row = one.as_dict()
    row.update(
        config=config, amp=amp, ckpt=ckpt, crop=crop, classes=len(model.train_class_texts),
        optimizer_s=time.perf_counter() - start, activation_bytes_2=two.activation_bytes,
        flops_2=two.forward_flops + two.backward_flops,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        trainable_m=sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
    )  # fmt: skip
    return row


def run_in_subprocess(config: str, amp: bool, ckpt: bool, threads: int) -> Optional[Dict]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", config, "--threads", str(threads)]
    cmd += ["--amp"] * amp + ["--ckpt"] * ckpt
    return run_worker(cmd, config)


def s_iter_bound(flops_per_window: float, gpu: str, amp: bool) -> float:
    """Seconds per iteration of BATCH windows at UTILISATION of ``gpu``'s peak."""
    peak = PEAK_TFLOPS[gpu][0 if amp else 1] * 1e12
    return BATCH * flops_per_window / (UTILISATION * peak)


def derived(row: Dict) -> Dict:
    """The GPU numbers derived from one measured row (docs/BENCHMARKS.md states the rules)."""
    import dataclasses

    from ov2vss.engine.training_cost import (
        StepCost,
        activation_scaling,
        estimate_peak_bytes,
        max_windows,
    )

    one = StepCost(**{f.name: row[f.name] for f in dataclasses.fields(StepCost)})
    two = dataclasses.replace(one, windows=2, activation_bytes=row["activation_bytes_2"])
    per_window, constant = activation_scaling(one, two)
    flops = row["forward_flops"] + row["backward_flops"]
    state = (row["param_bytes"], row["trainable_bytes"], per_window)
    return {
        "per_window_bytes": per_window,
        "constant_bytes": constant,
        "peak_batch4_gib": estimate_peak_bytes(*state, BATCH, constant) / GIB,
        "fits": {c: max_windows(*state, int(gib * GIB), constant) for c, gib in CARDS_GIB.items()},
        "s_iter": {gpu: s_iter_bound(flops, gpu, row["amp"]) for gpu in ("A100", "H100")},
        # the utilisation of the RTX 3090's (fp16, fp32) peaks that the paper's 0.72 s implies
        "paper_utilisation": [
            BATCH * flops / PAPER_S_ITER / (peak * 1e12) for peak in PEAK_TFLOPS["RTX 3090"]
        ],
    }


def _name(row: Dict) -> str:
    return os.path.splitext(os.path.basename(row["config"]))[0]


def _setting(row: Dict) -> str:
    return ("AMP" if row["amp"] else "fp32") + (" + ckpt" if row["ckpt"] else "")


def print_results(rows: List[Dict]) -> None:
    from ov2vss.engine.training_cost import CONTEXT_BYTES, FRAGMENTATION

    table = [["config", "setting", "params M", "trainable M", "fwd GFLOP", "bwd GFLOP", "fwd s",
              "bwd s", "CPU s", "AdamW s", "params+grads+AdamW GiB", "saved GiB", "act. 1 GiB",
              "act. 2 GiB", "per window GiB", "constant GiB"]]  # fmt: skip
    for r in rows:
        state = r["param_bytes"] + 3 * r["trainable_bytes"]
        table.append([
            _name(r), _setting(r), f"{r['params_m']:.1f}", f"{r['trainable_m']:.1f}",
            f"{r['forward_flops'] / 1e9:.0f}", f"{r['backward_flops'] / 1e9:.0f}",
            f"{r['forward_s']:.1f}", f"{r['backward_s']:.1f}", f"{r['cpu_s']:.1f}",
            f"{r['optimizer_s']:.1f}",
            f"{state / GIB:.2f}", f"{r['saved_bytes'] / GIB:.2f}",
            f"{r['activation_bytes'] / GIB:.2f}", f"{r['activation_bytes_2'] / GIB:.2f}",
            *(f"{derived(r)[k] / GIB:.2f}" for k in ("per_window_bytes", "constant_bytes")),
        ])  # fmt: skip
    print(
        "measured (CPU; times, FLOPs and saved tensors of one window; activation peaks of 1 and 2):"
    )
    print_table(table)
    table = [["config", "setting", "peak batch 4 GiB", *(f"windows {c}" for c in CARDS_GIB),
              "A100 s/iter", "H100 s/iter", "3090 util. fp16 / fp32"]]  # fmt: skip
    for r in rows:
        d = derived(r)
        table.append([
            _name(r), _setting(r), f"{d['peak_batch4_gib']:.1f}",
            *(str(d["fits"][c]) for c in CARDS_GIB),
            f"{d['s_iter']['A100']:.3f}", f"{d['s_iter']['H100']:.3f}",
            " / ".join(f"{100 * u:.0f}%" for u in d["paper_utilisation"]),
        ])  # fmt: skip
    print(
        f"\nderived: windows per GPU that fit (peak x {1 + FRAGMENTATION:.2f} + "
        f"{CONTEXT_BYTES / GIB:g} GiB "
        f"within {', '.join(f'{g} GiB' for g in CARDS_GIB.values())}); s/iter at batch {BATCH} "
        f"at {UTILISATION:.0%} of the dense fp16/bf16 (AMP) or fp32 peak; the utilisation of "
        f"the RTX 3090's fp16 / fp32 peaks that the paper's {PAPER_S_ITER} s/iter implies:"
    )
    print_table(table)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=VSPW_CONFIGS, help="relative to the repo")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--json", help=f"write the rows here (full run default: {JSON_PATH})")
    parser.add_argument("--quick", action="store_true", help="tiny config, 32 x 32, in-process")
    parser.add_argument(
        "--from-json", help="print the tables of an earlier --json, measure nothing"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one setting, printed as JSON
    parser.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(args.worker, args.amp, args.ckpt)))
        return 0
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            rows = [{k: v for k, v in r.items() if k != "derived"} for r in json.load(f)]
    elif args.quick:
        rows = [measure(QUICK_CONFIG, s["amp"], s["ckpt"], quick=True) for s in settings("")]
    else:
        print(
            f"OV2VSS training step, one {CROP}x{CROP} window (4 frames + the random frame), "
            f"80 seen names, random weights, CPU, {args.threads} thread(s)",
            flush=True,
        )
        rows = []
        for config in args.configs:
            for s in settings(config):
                row = run_in_subprocess(config, s["amp"], s["ckpt"], args.threads)
                if row is not None:
                    rows.append(row)
                    print(f"  {_name(row)} {_setting(row)}: done", flush=True)
    print_results(rows)
    path = args.json or (None if args.quick else JSON_PATH)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump([dict(r, derived=derived(r)) for r in rows], f, indent=1)
    expected = (
        len(rows)
        if args.from_json
        else 2 if args.quick else sum(map(len, map(settings, args.configs)))
    )
    return 0 if len(rows) == expected and all(math.isfinite(r["forward_s"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
