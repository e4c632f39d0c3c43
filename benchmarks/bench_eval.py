#!/usr/bin/env python
"""Evaluation cost on CPU: window-by-window vs streaming evaluation, and text encoding over the
full vs the short context (docs/BENCHMARKS.md).

(1) Per evaluated frame, ``Trainer.test`` (what ``train_net.py --eval-only`` runs) on a
    synthetic 20-frame 480 x 853 video in the VSPW layout (written here, label maps by
    ``prepare_vspw``), protocol "unseen" (44 VSPW names), random weights:
      window  TEST.STREAMING False: the test loader, one window per annotated frame (the
              backbone on 5 frames, CLIP's image tower on 4);
      stream  TEST.STREAMING True: every frame read and encoded once.
    Both include reading and decoding the frames and the evaluator. Window-by-window runs on
    the first ``--window-frames`` frames only (its cost per frame does not depend on the frame).
(2) The text embeddings of the 124 VSPW names x the 14 ViLD prompt templates through
    ViT-B-16's text tower (random init): open_clip's ``encode_text`` over the full 77-token
    context vs ``CLIPAdapter.encode_vocabulary``'s exact short context.

Targets: (1) streaming >= 3.5x faster per frame than window-by-window for R-50;
(2) the short context >= 5x faster than the full one. Ratios use the process's CPU time.
Each measurement runs in its own process (:func:`run_in_process`).

    python benchmarks/bench_eval.py [--configs tiny r50] [--frames 20] [--window-frames 3]
        [--threads 1] [--skip-text]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
from typing import Dict, List, Optional

# benchmarks/ is this script's directory, hence on sys.path when it runs
from bench_streaming import CONFIGS, HEIGHT, REPO, WIDTH, make_frames
from common import Meter, per_frame, print_table

EVAL_PROTOCOL = "unseen"  # the paper's protocol (Table I): the 44 unseen VSPW names
MIB = 1024**2
TARGET_STREAM = 3.5
TARGET_TEXT = 5.0


def write_vspw_video(root: str, num_frames: int, num_classes: int) -> None:
    """``root/data/bench_video`` (frames of ``make_frames``, raw masks of 32x32 blocks of ids
    0..num_classes drifting one block per frame) listed in ``root/val.txt``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    video = os.path.join(root, "data", "bench_video")
    cols = -(-WIDTH // 32)
    blocks = rng.integers(0, num_classes + 1, (-(-HEIGHT // 32), cols + num_frames), np.uint8)
    for sub in ("origin", "mask"):
        os.makedirs(os.path.join(video, sub))
    for t, frame in enumerate(make_frames(num_frames)):
        Image.fromarray(frame).save(os.path.join(video, "origin", f"{t:05d}.jpg"), quality=90)
        mask = np.kron(blocks[:, t : t + cols], np.ones((32, 32), np.uint8))[:HEIGHT, :WIDTH]
        Image.fromarray(mask).save(os.path.join(video, "mask", f"{t:05d}.png"))
    with open(os.path.join(root, "val.txt"), "w", encoding="utf-8") as f:
        f.write("bench_video\n")


def measure_eval(config: str, num_frames: int, window_frames: int, threads: int) -> Dict:
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import ov2vss  # noqa: F401  (registers the model and the datasets)
    from ov2vss.config import get_ov2vss_cfg
    from ov2vss.data.datasets.register_vspw import register_vspw_family
    from ov2vss.data.prepare_vspw import prepare_vspw
    from ov2vss.data.vspw_classes import VSPW_NUM_SEEN, get_vspw_class_names
    from ov2vss.engine import Trainer
    from ov2vss.vocabulary import dataset_vocabulary

    torch.set_num_threads(threads)
    # a few frames have no window of 8 or 16 frames: mVC is NaN there, which is expected
    logging.getLogger("ov2vss.evaluation.video_sem_seg_evaluation").setLevel(logging.ERROR)
    tmp = tempfile.mkdtemp(prefix="bench_eval_")
    root = os.path.join(tmp, "VSPW")
    names = get_vspw_class_names()
    write_vspw_video(root, num_frames, len(names))
    report = prepare_vspw(root, ["val"], names, VSPW_NUM_SEEN)
    if report.problems:
        raise RuntimeError("; ".join(report.problems[:3]))
    register_vspw_family("bench_eval", root, names, VSPW_NUM_SEEN, splits=("val",))
    full = f"bench_eval_val_{EVAL_PROTOCOL}"
    records = DatasetCatalog.get(full)
    meta = {k: v for k, v in MetadataCatalog.get(full).as_dict().items() if k != "name"}
    subsets = {}
    for count in sorted({1, window_frames}):  # the first frames of the video (1: the warm-up)
        subsets[count] = f"{full}_first{count}"
        DatasetCatalog.register(subsets[count], lambda n=count: [dict(r) for r in records[:n]])
        MetadataCatalog.get(subsets[count]).set(**meta)

    opts = [
        "MODEL.WEIGHTS", "", "MODEL.CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TEST", HEIGHT, "INPUT.MAX_SIZE_TEST", 4 * WIDTH,
        "OUTPUT_DIR", tmp, "DATALOADER.NUM_WORKERS", 0,
    ]  # fmt: skip
    cfg = get_ov2vss_cfg(os.path.join(REPO, CONFIGS.get(config, config)), opts)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).eval()
    model.clip.encode_vocabulary(dataset_vocabulary(full))  # once per vocabulary (cached)

    def evaluate(name: str, streaming: bool) -> Dict:
        run = cfg.clone()
        run.defrost()
        run.DATASETS.TEST = (name,)
        run.TEST.STREAMING = streaming
        return Trainer.test(run, model)

    evaluate(subsets[1], False)  # warm-up: first allocations of both paths
    evaluate(subsets[1], True)
    meters = {"window": Meter(), "stream": Meter()}
    window = meters["window"](lambda: evaluate(subsets[window_frames], False))
    stream = meters["stream"](lambda: evaluate(full, True))
    for res in (window, stream):
        if not 0 <= res["sem_seg"]["pACC"] <= 100:
            raise RuntimeError(f"unexpected metrics {res}")
    counts = {"window": window_frames, "stream": num_frames}
    return {
        "name": f"{config} (R-{cfg.MODEL.RESNETS.DEPTH}, CLIP {cfg.MODEL.CLIP.ARCH})",
        "classes": len(dataset_vocabulary(full)),
        "modes": per_frame(meters, counts),
    }


def measure_text(threads: int) -> Dict:
    import torch

    import ov2vss  # noqa: F401
    from ov2vss.config import get_ov2vss_cfg
    from ov2vss.data.vspw_classes import class_name_to_text, get_vspw_class_names
    from ov2vss.modeling.clip import adapter as clip_adapter

    torch.set_num_threads(threads)
    cfg = get_ov2vss_cfg(os.path.join(REPO, CONFIGS["r50"]), ["MODEL.CLIP.PRETRAINED", ""])
    torch.manual_seed(0)
    adapter = clip_adapter.build_clip_adapter(cfg).eval()
    names = [class_name_to_text(n) for n in get_vspw_class_names()]
    meters = {"short": Meter(), "full": Meter()}
    short = meters["short"](lambda: adapter.encode_vocabulary(names))
    adapter._text_cache.clear()
    exact = clip_adapter.encode_text
    clip_adapter.encode_text = lambda model, tokens: model.encode_text(tokens)  # the full path
    try:
        full = meters["full"](lambda: adapter.encode_vocabulary(names))
    finally:
        clip_adapter.encode_text = exact
    return {
        "prompts": len(names) * len(adapter.templates),
        "max_diff": float((short - full).abs().max()),
        "modes": {m: {"wall_s": meters[m].wall, "cpu_s": meters[m].cpu} for m in meters},
    }


def run_in_process(fn, *args) -> Optional[Dict]:
    """``fn(*args)`` in a fresh process (own memory and allocator state); None on failure."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        try:
            return pool.apply(fn, args)
        except Exception as e:  # report and go on with the rest
            sys.stderr.write(f"{fn.__name__}{args} failed: {type(e).__name__}: {e}\n")
            return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="tiny, r50 or paths")
    parser.add_argument("--frames", type=int, default=20, help="frames of the video")
    parser.add_argument(
        "--window-frames", type=int, default=3, help="frames window-by-window evaluates"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--skip-text", action="store_true", help="no text-encoding measurement")
    args = parser.parse_args(argv)
    if not 1 <= args.window_frames <= args.frames:
        parser.error("--window-frames must lie in 1..--frames")

    print(
        f"OV2VSS evaluation, a {args.frames}-frame {HEIGHT}x{WIDTH} video, random weights, CPU: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} torch thread(s)"
    )
    rows = [["config", "mode", "classes", "frames", "wall ms/frame", "CPU ms/frame", "speed-up",
             "+RSS MiB"]]  # fmt: skip
    failed, notes = False, []
    for config in args.configs:
        res = run_in_process(measure_eval, config, args.frames, args.window_frames, args.threads)
        if res is None:
            failed = True
            continue
        window, stream = res["modes"]["window"], res["modes"]["stream"]
        speedup = window["cpu_s"] / stream["cpu_s"]
        for mode, r in (("window-by-window", window), ("streaming", stream)):
            rows.append([
                res["name"], mode, str(res["classes"]), str(r["frames"]), f"{1000 * r['wall_s']:.0f}",
                f"{1000 * r['cpu_s']:.0f}", f"{speedup:.1f}" if r is stream else "",
                f"{r['peak_mib']:.0f}",
            ])  # fmt: skip
        if config == "r50":
            ok = speedup >= TARGET_STREAM
            failed |= not ok
            notes.append(
                f"r50: streaming {speedup:.1f}x faster per frame [target >= {TARGET_STREAM}]: "
                f"{'ok' if ok else 'MISSED'}"
            )
    print_table(rows)

    if not args.skip_text:
        res = run_in_process(measure_text, args.threads)
        if res is None:
            failed = True
        else:
            short, full = res["modes"]["short"], res["modes"]["full"]
            speedup = full["cpu_s"] / short["cpu_s"]
            print(f"\nText encoding, ViT-B-16 text tower (random init), {res['prompts']} prompts")
            print_table([
                ["context", "wall s", "CPU s", "speed-up"],
                ["full (77 tokens)", f"{full['wall_s']:.1f}", f"{full['cpu_s']:.1f}", ""],
                ["short (exact)", f"{short['wall_s']:.1f}", f"{short['cpu_s']:.1f}", f"{speedup:.1f}"],
            ])  # fmt: skip
            ok = speedup >= TARGET_TEXT and res["max_diff"] <= 1e-5
            failed |= not ok
            notes.append(
                f"text: short context {speedup:.1f}x faster [target >= {TARGET_TEXT}], max |diff| "
                f"of the embeddings {res['max_diff']:.1e}: {'ok' if ok else 'MISSED'}"
            )
    print("\n".join(notes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
