#!/usr/bin/env python
"""Peak memory of streaming inference against the vocabulary size (docs/BENCHMARKS.md).

The demo's path (:class:`ov2vss.VideoPredictor`, tiny config, random weights) on 3 synthetic
frames of 640 x 272 (bikes.mp4's size, test size 272), with 6, 124, 1000 and 5000 class names.
Each row runs in its own process, so its peak RSS (``ru_maxrss``) is its own. The per-frame
output [N, 272, 640] float32 itself grows with N; the target is that little else does: peak
RSS above the state before the first frame stays within 1.1 x the output plus 500 MB: the
decoder's logits at stride 4 (1/16 of the output) scale with N, and one chunk of
MODEL.OV2VSS.CLASS_CHUNK classes' decoder activations (~420 MB here) is a constant.

    python benchmarks/bench_vocabulary_memory.py [--names 6 124 1000 5000] [--chunk C] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Dict, List, Optional

# benchmarks/ is this script's directory, hence on sys.path when it runs
from common import REPO

HEIGHT, WIDTH, FRAMES = 272, 640, 3
MB = 1024**2
SLACK_MB = 500  # one chunk's decoder activations (CLASS_CHUNK 64 at stride 4: ~420 MB)


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def measure(num_names: int, chunk: Optional[int], num_frames: int = FRAMES) -> Dict[str, float]:
    """One process: build the tiny model, encode ``num_names`` names, segment the frames."""
    import numpy as np
    import torch

    import ov2vss  # noqa: F401
    from ov2vss.config import get_ov2vss_cfg
    from ov2vss.predictor import VideoPredictor

    torch.set_num_threads(1)
    opts = [
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TEST", HEIGHT, "INPUT.MAX_SIZE_TEST", 4 * WIDTH,
    ]  # fmt: skip
    if chunk:
        opts += ["MODEL.OV2VSS.CLASS_CHUNK", chunk]
    cfg = get_ov2vss_cfg(os.path.join(REPO, "configs/toy/ov2vss_tiny_cpu.yaml"), opts)
    names = [f"object number {i}" for i in range(num_names)]
    predictor = VideoPredictor(cfg)
    predictor.model.set_test_vocabulary(names)
    with torch.no_grad():
        predictor.model.clip.encode_vocabulary(names)  # cached: not part of the per-frame peak
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(num_frames)]
    base = _peak_rss_bytes()
    labels = []
    with torch.no_grad():
        for out in predictor.run(frames):
            labels.append(out["sem_seg"].argmax(0).numpy())  # what the demo keeps of a frame
            del out
    peak = _peak_rss_bytes()
    output = num_names * HEIGHT * WIDTH * 4
    return {
        "names": num_names,
        "output_mb": output / MB,
        "base_mb": base / MB,
        "peak_mb": peak / MB,
        "growth_mb": (peak - base) / MB,
        "ok": (peak - base) <= 1.1 * output + SLACK_MB * MB,
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, nargs="+", default=[6, 124, 1000, 5000])
    parser.add_argument("--chunk", type=int, default=None, help="MODEL.OV2VSS.CLASS_CHUNK")
    parser.add_argument("--frames", type=int, default=FRAMES, help="frames per row")
    parser.add_argument("--json", action="store_true", help="print one JSON line per row")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.chunk, args.frames)))
        return 0
    rows = []
    for n in args.names:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n)]
        cmd += ["--chunk", str(args.chunk)] if args.chunk else []
        cmd += ["--frames", str(args.frames)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0 if all(r["ok"] for r in rows) else 1
    chunk = f"CLASS_CHUNK {args.chunk}" if args.chunk else "default CLASS_CHUNK"
    print(f"Streaming inference, tiny config, {args.frames} frames of {WIDTH}x{HEIGHT}, {chunk}")
    print(
        f"target: peak RSS growth during the frames <= 1.1 x output [N,{HEIGHT},{WIDTH}] + {SLACK_MB} MB"
    )
    print("| names | output (MB) | RSS before frames (MB) | peak RSS (MB) | growth (MB) | target |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['names']} | {r['output_mb']:.0f} | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | "
            f"{r['growth_mb']:.0f} | {'ok' if r['ok'] else 'MISSED'} |"
        )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
