#!/usr/bin/env python
"""Per-frame latency and memory of video inference on CPU (docs/BENCHMARKS.md).

Three ways to segment every frame of a 480 x 853 video:

  (a) image  the image-only path: one frame per forward, STCF / RFE / VTE off;
  (b) naive  window-by-window OV2VSS: a forward per frame on its window t-9, t-6, t-3, t plus the
             random frame (5 backbone and 4 CLIP passes per output frame);
  (c) stream ``VideoPredictor``: every frame encoded once, per-frame features cached (its
             up-front encoding of the last frame, the random frame, is counted).

Targets: (c) within 1.3x of (a) per frame, and at least 3x faster than (b).

Random weights (MODEL.WEIGHTS "" and MODEL.CLIP.PRETRAINED "": nothing is downloaded); the
vocabulary is the demo's 6 street names. (a) and (b) get frames already resized and stacked
(no decoding); (c) gets the raw frames and does its own (no-op) resize. The three run
interleaved frame by frame in one process per config, so that the load of other jobs on a
shared machine hits them alike; latency is reported as wall time and as the process's CPU
time (the ratios use CPU time; one torch thread by default). Memory: the largest transient
increase of the resident set during one frame of the mode (Linux VmHWM, reset before each
call), and for (c) the features its cache holds at most (they persist between frames).

    python benchmarks/bench_streaming.py [--configs tiny r50] [--frames 12] [--threads 1]
        [--clip-arch ViT-B-16]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
from typing import Dict, List, Optional

# benchmarks/ is this script's directory, hence on sys.path when it runs (and in the
# spawned workers, which inherit it)
from common import REPO, Meter, per_frame, print_table, proc_status_kib

CONFIGS = {
    "tiny": "configs/toy/ov2vss_tiny_cpu.yaml",
    "r50": "configs/vspw/ov2vss_R50.yaml",
}
MODES = ("image", "naive", "stream")
VOCABULARY = ["road", "car", "person", "bicycle", "building", "sky"]
HEIGHT, WIDTH = 480, 853
MIB = 1024**2


def build_cfg(config: str, image_only: bool, clip_arch: Optional[str]):
    from ov2vss.config import get_ov2vss_cfg

    cfg = get_ov2vss_cfg(os.path.join(REPO, CONFIGS.get(config, config)))
    opts = [
        "MODEL.WEIGHTS", "", "MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu",
        "MODEL.OV2VSS.TEST_VOCABULARY", VOCABULARY, "DATASETS.TRAIN", (), "DATASETS.TEST", (),
        "INPUT.MIN_SIZE_TEST", HEIGHT, "INPUT.MAX_SIZE_TEST", 4 * WIDTH,
    ]  # fmt: skip
    if clip_arch and config != "tiny":
        opts += ["MODEL.CLIP.ARCH", clip_arch]
    if image_only:
        opts += [
            "MODEL.OV2VSS.STCF.ENABLED", False, "MODEL.OV2VSS.RFE.ENABLED", False,
            "MODEL.OV2VSS.VTE.ENABLED", False, "INPUT.TEMPORAL.REFERENCE_OFFSETS", [],
        ]  # fmt: skip
    cfg.merge_from_list(opts)
    return cfg


def make_frames(num_frames: int):
    """A panning synthetic scene (content does not change the cost, only the size does)."""
    import numpy as np

    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (HEIGHT, WIDTH + 4 * num_frames, 3), dtype=np.uint8)
    return [np.ascontiguousarray(scene[:, 4 * i : 4 * i + WIDTH]) for i in range(num_frames)]


def measure(
    config: str, num_frames: int, naive_frames: int, threads: int, clip_arch: Optional[str]
) -> Dict:
    import torch
    from detectron2.modeling import build_model

    import ov2vss  # noqa: F401  (registers the model)
    from ov2vss.data.frame_sampling import farthest_frame, window_indices
    from ov2vss.predictor import VideoPredictor

    torch.set_num_threads(threads)
    cfg = build_cfg(config, False, clip_arch)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.manual_seed(0)
    image_model = build_model(build_cfg(config, True, clip_arch)).eval()
    predictor = VideoPredictor(cfg, model=model)
    frames = make_frames(num_frames)
    tensors = [torch.as_tensor(f.transpose(2, 0, 1).copy()) for f in frames]

    def window_input(t: int, offsets: List[int]) -> Dict:
        window = window_indices(t, num_frames, offsets)
        return {
            "frames": torch.stack([tensors[i] for i in window]),
            "random_frame": tensors[farthest_frame(t, num_frames)],
            "height": HEIGHT,
            "width": WIDTH,
        }

    offsets = list(cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS)
    meters = {mode: Meter() for mode in MODES}
    cache_bytes = 0
    with torch.no_grad():
        # warm-up (first calls allocate and encode the vocabulary)
        image_model([window_input(0, [])])
        model([window_input(0, offsets)])
        list(predictor.run(frames[:2]))
        rss_model = proc_status_kib("VmRSS")

        meters["stream"](lambda: predictor.reset(num_frames, frames[-1]))
        for t in range(num_frames):
            out_a = meters["image"](lambda: image_model([window_input(t, [])])[0])
            out_c = meters["stream"](lambda: predictor.push(frames[t]))
            cache_bytes = max(cache_bytes, predictor.cache_bytes)
            if t < naive_frames:
                out_b = meters["naive"](lambda: model([window_input(t, offsets)])[0])
    for out in (out_a, out_b, out_c):
        if tuple(out["sem_seg"].shape) != (len(VOCABULARY), HEIGHT, WIDTH):
            raise RuntimeError(f"unexpected output shape {tuple(out['sem_seg'].shape)}")
    counts = {"image": num_frames, "naive": naive_frames, "stream": num_frames}
    return {
        "modes": per_frame(meters, counts),
        "cache_mib": cache_bytes / MIB,
        "rss_models_mib": rss_model / 1024,
        "name": f"{config} (R-{cfg.MODEL.RESNETS.DEPTH}, CLIP {cfg.MODEL.CLIP.ARCH})",
    }


def run_config(config: str, args: argparse.Namespace) -> Optional[Dict]:
    """measure() in a fresh process, so that the configs do not share memory or allocator state."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        try:
            return pool.apply(
                measure, (config, args.frames, args.naive_frames, args.threads, args.clip_arch)
            )
        except Exception as e:  # report and go on with the other configs
            sys.stderr.write(f"{config} failed: {type(e).__name__}: {e}\n")
            return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=list(CONFIGS), help="tiny, r50 or config paths"
    )
    parser.add_argument("--frames", type=int, default=12, help="frames of the video")
    parser.add_argument(
        "--naive-frames", type=int, default=3, help="frames (b) also runs on (its cost is constant)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--clip-arch", default=None, help="override MODEL.CLIP.ARCH of the non-tiny configs"
    )
    args = parser.parse_args(argv)

    print(
        f"OV2VSS video inference, {HEIGHT}x{WIDTH} frames, {len(VOCABULARY)} classes, random weights, CPU: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s)"
    )
    header = [
        "config",
        "mode",
        "frames",
        "wall ms/frame",
        "CPU ms/frame",
        "x (a)",
        "(b)/(c)",
        "+RSS MiB",
        "cache MiB",
    ]
    rows, failed, notes = [header], False, []
    for config in args.configs:
        res = run_config(config, args)
        if res is None:
            failed = True
            continue
        base, naive, stream = (res["modes"][m]["cpu_s"] for m in MODES)
        for label, mode in zip(("(a) image", "(b) naive", "(c) stream"), MODES):
            r = res["modes"][mode]
            rows.append([
                res["name"], label, str(r["frames"]), f"{1000 * r['wall_s']:.0f}", f"{1000 * r['cpu_s']:.0f}",
                f"{r['cpu_s'] / base:.2f}", f"{naive / stream:.1f}" if mode == "stream" else "",
                f"{r['peak_mib']:.0f}", f"{res['cache_mib']:.0f}" if mode == "stream" else "",
            ])  # fmt: skip
        ok = stream <= 1.3 * base and naive >= 3 * stream
        failed |= not ok
        notes.append(
            f"{config}: (c) = {stream / base:.2f}x (a) [target <= 1.3], (b) = {naive / stream:.1f}x (c) "
            f"[target >= 3]: {'ok' if ok else 'MISSED'}; RSS with both models loaded {res['rss_models_mib']:.0f} MiB"
        )
    print_table(rows)
    print("\n".join(notes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
