#!/usr/bin/env python
"""Windows per second of the training data mapper, and the loader workers a GPU needs
(docs/BENCHMARKS.md, "Data loader").

VSPW-sized data is generated in a temporary directory (ov2vss.data.synthetic_vspw: 480 x 853
JPEG frames with camera-like grain, PNG masks, label maps, the VSPW layout). For every VSPW
config, its training mapper (``VideoSemSegDatasetMapper(cfg, is_train=True)``: window + random
frame, the config's resize / crop / flip / photometric settings, unseen pixels hidden) maps
``--windows`` windows in this process, one thread, as one DataLoader worker would; the CPU
time per window gives the windows per second of one worker on a core of its own.

Derived: the workers per GPU that keep up with ``4 / s_iter`` windows per second (batch 4 per
GPU), for the s/iter lower bounds of bench_train_step.py (read from its ``--json`` output) and
for the paper's 0.72 s/iter on an RTX 3090.

    python benchmarks/bench_loader.py [--windows 60] [--configs a.yaml ...] [--train-json PATH]
        [--json PATH]
    python benchmarks/bench_loader.py --quick   # small frames, one config, a few windows
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional

# benchmarks/ is this script's directory, hence on sys.path when it runs
from common import REPO, VSPW_CONFIGS, print_table

TRAIN_JSON = os.path.join(REPO, "output", "benchmarks", "bench_train_step.json")
SIZE, QUICK_SIZE = (480, 853), (48, 85)
# the quick run scales the paper's input settings down with the frames
QUICK_OPTS = ["INPUT.MIN_SIZE_TRAIN", (24, 48, 96), "INPUT.MAX_SIZE_TRAIN", 400]
QUICK_OPTS += ["INPUT.CROP.SIZE", (48, 48)]
VIDEOS, FRAMES = 4, 30  # VSPW videos are longer; the window needs 10 frames + a random one
NOISE = 8.0  # JPEG grain: ~115 KB per 480 x 853 frame at quality 90
BATCH = 4  # windows per GPU per iteration
PAPER_S_ITER = 0.72


def write_data(root: str, size, videos: int, frames: int) -> Dict[str, float]:
    """Generate the VSPW-layout data, register ``vspw_*`` at ``root``; file size stats."""
    from ov2vss.data.datasets.register_vspw import register_vspw_family
    from ov2vss.data.synthetic_vspw import write_synthetic_vspw
    from ov2vss.data.vspw_classes import VSPW_NUM_SEEN, get_vspw_class_names

    names = {f"video_{i}": ("train", frames) for i in range(videos)}
    write_synthetic_vspw(root, names, size, noise=NOISE)
    register_vspw_family(
        "vspw", root, get_vspw_class_names(), VSPW_NUM_SEEN, ("train",), overwrite=True
    )
    first = os.path.join(root, "data", "video_0")
    return {
        "jpeg_kb": os.path.getsize(os.path.join(first, "origin", "00000.jpg")) / 1024,
        "png_kb": os.path.getsize(os.path.join(first, "mask", "00000.png")) / 1024,
    }


def measure(config: str, windows: int, quick: bool) -> Dict[str, float]:
    """CPU and wall time per window of ``config``'s training mapper (after 2 warm-up windows)."""
    import numpy as np
    from detectron2.data import DatasetCatalog

    from ov2vss.config import get_ov2vss_cfg
    from ov2vss.data.video_mapper import VideoSemSegDatasetMapper

    opts = ["DATASETS.TRAIN", ("vspw_train_seen",)] + (QUICK_OPTS if quick else [])
    cfg = get_ov2vss_cfg(os.path.join(REPO, config), opts)
    mapper = VideoSemSegDatasetMapper(cfg, is_train=True)
    records = DatasetCatalog.get("vspw_train_seen")
    np.random.seed(0)
    for record in records[:2]:
        mapper(record)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(windows):
        out = mapper(records[(7 * i) % len(records)])  # spread over the videos
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert out["frames"].shape[0] == len(cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS) + 1
    return {
        "config": config,
        "cpu_ms": 1e3 * cpu / windows,
        "wall_ms": 1e3 * wall / windows,
        "configured": cfg.DATALOADER.NUM_WORKERS,
    }


def gpu_rates(path: str) -> Dict[str, Dict[str, float]]:
    """{config: {"A100 fp32": s/iter, ...}} from bench_train_step.py's JSON (empty if absent)."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    rates: Dict[str, Dict[str, float]] = {}
    for row in rows:
        if row.get("ckpt"):
            continue
        precision = "AMP" if row["amp"] else "fp32"
        for gpu, s_iter in row["derived"]["s_iter"].items():
            rates.setdefault(row["config"], {})[f"{gpu} {precision}"] = s_iter
    return rates


def workers_needed(s_iter: float, cpu_ms: float) -> int:
    """Workers (one core each) that map BATCH windows within ``s_iter`` seconds."""
    return math.ceil(BATCH / s_iter * cpu_ms / 1e3)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=VSPW_CONFIGS, help="relative to the repo")
    parser.add_argument("--windows", type=int, default=60, help="timed windows per config")
    parser.add_argument("--train-json", default=TRAIN_JSON, help="bench_train_step.py --json")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--quick", action="store_true", help="48 x 85 frames, one config")
    args = parser.parse_args(argv)
    import torch

    import ov2vss  # noqa: F401  (registers the datasets)

    torch.set_num_threads(1)  # as in a DataLoader worker
    configs = args.configs[:1] if args.quick else args.configs
    windows = min(args.windows, 6) if args.quick else args.windows
    size = QUICK_SIZE if args.quick else SIZE
    work = tempfile.mkdtemp(prefix="ov2vss_bench_loader_")
    try:
        start = time.perf_counter()
        videos, frames = (1, 12) if args.quick else (VIDEOS, FRAMES)
        files = write_data(os.path.join(work, "VSPW"), size, videos, frames)
        data_s = time.perf_counter() - start
        rows = [measure(config, windows, args.quick) for config in configs]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"OV2VSS training mapper, {size[0]}x{size[1]} frames (JPEG {files['jpeg_kb']:.0f} KB, "
        f"mask PNG {files['png_kb']:.0f} KB, written in {data_s:.0f} s), {windows} windows "
        "per config, one process, one thread"
    )
    rates = gpu_rates(args.train_json)
    targets = sorted({name for r in rates.values() for name in r}) + ["paper 3090"]
    table = [["config", "CPU ms/window", "wall ms/window", "windows/s/worker", "configured"]]
    table[0] += [f"workers {t}" for t in targets]
    for r in rows:
        s_iters = dict(rates.get(r["config"], {}), **{"paper 3090": PAPER_S_ITER})
        r["workers"] = {t: workers_needed(s, r["cpu_ms"]) for t, s in s_iters.items()}
        name = os.path.splitext(os.path.basename(r["config"]))[0]
        table.append(
            [name, f"{r['cpu_ms']:.1f}", f"{r['wall_ms']:.1f}", f"{1e3 / r['cpu_ms']:.1f}"]
            + [str(r["configured"])]
            + [str(r["workers"].get(t, "-")) for t in targets]
        )
    print_table(table)
    if not rates:
        print(f"(no {args.train_json}: run bench_train_step.py first for the GPU columns)")
    print(
        f"workers: to map {BATCH} windows per GPU within the s/iter lower bound of "
        "bench_train_step.py (or the paper's 0.72 s), one core per worker; configured: the "
        "config's DATALOADER.NUM_WORKERS"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["cpu_ms"] > 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
