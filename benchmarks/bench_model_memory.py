#!/usr/bin/env python
"""Peak memory and time of one OV2VSS inference forward on CPU (docs/BENCHMARKS.md).

One 480 x 853 window (the 4 frames t-9, t-6, t-3, t plus the random frame), the full VSPW
vocabulary of 124 names, random weights (MODEL.WEIGHTS "" and MODEL.CLIP.PRETRAINED "", so
nothing is downloaded; the SAM configs' backbone is then randomly initialised too). The frames
enter at 480 x 853 whatever the config's INPUT.MIN_SIZE_TEST (the official preset would test
at 576 x 1024). Each config runs in its own process so that its peak RSS
(``ru_maxrss``) is its own. Target: peak RSS under 8 GB for the R-50 config.

    python benchmarks/bench_model_memory.py [--threads N] [--configs a.yaml b.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from typing import Dict, List, Optional

# benchmarks/ is this script's directory, hence on sys.path when it runs
from common import REPO, print_table, run_worker

DEFAULT_CONFIGS = [
    "configs/vspw/ov2vss_R50.yaml",
    "configs/vspw/ov2vss_vitb16.yaml",
    # the paper's ViT-B (SAM's image encoder), then the same with every switch at the official
    # code's value (80 templates as cost-volume channels, P2T by ratios, 81 regions, ...)
    "configs/vspw/ov2vss_sam_vitb.yaml",
    "configs/vspw/ov2vss_sam_vitb_official.yaml",
]
TARGET_GB = {"configs/vspw/ov2vss_R50.yaml": 8.0}
FRAME_SIZE = (480, 853)  # VSPW 480p
GB = 1024**3


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class PhasePeak:
    """Highest RSS seen while a ``with`` block runs (a thread samples /proc every 2 ms; torch
    releases the GIL inside its kernels). ``ru_maxrss`` only gives the peak of the whole run."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(0.002)

    def __enter__(self) -> "PhasePeak":
        self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def measure(config: str, threads: int) -> Dict[str, float]:
    """Build the model of ``config`` with random weights, encode the vocabulary, run one forward."""
    import torch
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    import ov2vss  # noqa: F401  (registers the model and the datasets)
    from ov2vss.config import get_ov2vss_cfg

    torch.set_num_threads(threads)
    cfg = get_ov2vss_cfg(os.path.join(REPO, config))
    vocabulary = list(MetadataCatalog.get("vspw_val_all").class_texts)  # the 124 VSPW names
    cfg.merge_from_list(
        [
            "MODEL.WEIGHTS",
            "",
            "MODEL.CLIP.PRETRAINED",
            "",
            "MODEL.DEVICE",
            "cpu",
            "MODEL.OV2VSS.TEST_VOCABULARY",
            vocabulary,
        ]
    )
    start = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    build_s = time.perf_counter() - start
    rss_model = _rss_bytes()

    h, w = FRAME_SIZE
    gen = torch.Generator().manual_seed(0)
    window = {
        "frames": torch.randint(
            0,
            256,
            (len(cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS) + 1, 3, h, w),
            generator=gen,
            dtype=torch.uint8,
        ),
        "random_frame": torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8),
        "height": h,
        "width": w,
    }
    with torch.no_grad():
        # once per vocabulary (then cached): 124 names x the prompt templates through the text tower
        start = time.perf_counter()
        with PhasePeak() as text_peak:
            model.clip.encode_vocabulary(vocabulary)
        text_s = time.perf_counter() - start
        start = time.perf_counter()
        with PhasePeak() as forward_peak:
            out = model([window])[0]["sem_seg"]
        forward_s = time.perf_counter() - start
    if tuple(out.shape) != (len(vocabulary), h, w):
        raise RuntimeError(f"{config}: unexpected output shape {tuple(out.shape)}")
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "build_s": build_s,
        "text_s": text_s,
        "forward_s": forward_s,
        "rss_model_gb": rss_model / GB,
        "text_peak_gb": text_peak.peak / GB,
        "forward_peak_gb": forward_peak.peak / GB,
        "peak_rss_gb": _peak_rss_bytes() / GB,
    }


def run_in_subprocess(config: str, threads: int) -> Optional[Dict[str, float]]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", config, "--threads", str(threads)]
    return run_worker(cmd, config)


def print_results(rows: List[Dict]) -> None:
    header = ["config", "params (M)", "build (s)", "text (s)", "forward (s)", "RSS model (GB)",
              "peak text (GB)", "peak forward (GB)", "peak RSS (GB)", "target"]  # fmt: skip
    keys = [
        "params_m",
        "build_s",
        "text_s",
        "forward_s",
        "rss_model_gb",
        "text_peak_gb",
        "forward_peak_gb",
        "peak_rss_gb",
    ]
    table = [header]
    for r in rows:
        m, target = r["result"], TARGET_GB.get(r["config"])
        if m is None:
            table.append([r["config"], "failed"] + [""] * (len(header) - 2))
            continue
        verdict = (
            "-"
            if target is None
            else f"< {target:g} GB: {'ok' if m['peak_rss_gb'] < target else 'MISSED'}"
        )
        table.append(
            [r["config"]]
            + [
                f"{m[k]:.1f}" if k.endswith("_s") or k == "params_m" else f"{m[k]:.2f}"
                for k in keys
            ]
            + [verdict]
        )
    print_table(table)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=DEFAULT_CONFIGS, help="configs, relative to the repository"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads"
    )
    parser.add_argument(
        "--worker", help=argparse.SUPPRESS
    )  # internal: measure one config, print JSON
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.threads)))
        return 0

    print(
        f"OV2VSS inference, one {FRAME_SIZE[0]}x{FRAME_SIZE[1]} window of 4 frames + the random frame, "
        f"124 classes, random weights, CPU, {args.threads} thread(s)"
    )
    rows = [{"config": c, "result": run_in_subprocess(c, args.threads)} for c in args.configs]
    print_results(rows)
    print(
        "text: encoding the 124 names x the config's prompt templates, once per vocabulary (cached);\n"
        "forward: the window's inference forward with the cached text; peaks are RSS during each phase."
    )
    missed = [
        r
        for r in rows
        if r["result"] is None
        or r["result"]["peak_rss_gb"] >= TARGET_GB.get(r["config"], float("inf"))
    ]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
