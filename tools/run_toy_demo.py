#!/usr/bin/env python
"""`make demo`: OV2VSS trained and evaluated on the embedded toy dataset, on CPU.

1. Generates the toy dataset if needed (``$DETECTRON2_DATASETS/VSPW_toy``; compositional
   "colour shape" classes, 8 of 36 held out of training).
2. Evaluates a trivial frequency-prior predictor (always the most frequent seen class) — the
   floor the model has to beat.
3. Trains the tiny config (configs/toy/ov2vss_tiny_cpu.yaml: R-18, random tiny CLIP) with
   the Trainer of ``train_net.py`` (:class:`ov2vss.engine.Trainer`) on ``vspw_toy_train_seen`` (seen vocabulary only), then evaluates on
   ``vspw_toy_val_unseen`` (8 unseen names only), ``_seen`` and ``_all`` (36 names, hIoU).
4. Prints both metric tables side by side, with the chance level of each vocabulary.

    python tools/run_toy_demo.py [--config-file ...] [--output-dir output/toy_demo] [opts ...]
"""

import ov2vss  # noqa: F401  isort: skip  (first: registers everything, quiets import noise)
import argparse
import logging
import os
import sys
import time
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.utils.logger import setup_logger
from torch import nn

from ov2vss import VideoSemSegDatasetMapper, VideoSemSegEvaluator
from ov2vss.config import get_ov2vss_cfg
from ov2vss.data.datasets.register_vspw_toy import default_toy_root, register_toy
from ov2vss.data.io import read_mask
from ov2vss.data.toy import generate_toy_dataset
from ov2vss.engine import Trainer  # the Trainer train_net.py runs

EVAL_SETS = ("vspw_toy_val_unseen", "vspw_toy_val_seen", "vspw_toy_val_all")
COLUMNS = ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU", "pACC", "mVC8", "mVC16")


def class_frequencies(dataset_name: str) -> Dict[str, float]:
    """Pixel frequency of every class name of ``dataset_name`` over its label maps."""
    meta = MetadataCatalog.get(dataset_name)
    counts = np.zeros(len(meta.stuff_classes), np.int64)
    for record in DatasetCatalog.get(dataset_name):
        path = record["sem_seg_file_name"]
        labels = read_mask(path)  # already in the dataset's label space (datasets/README.md)
        counts += np.bincount(labels[labels != meta.ignore_label], minlength=len(counts))
    return dict(zip(meta.stuff_classes, (counts / max(1, counts.sum())).tolist()))


class FrequencyPrior(nn.Module):
    """Scores each class of the current vocabulary by its training frequency (by name)."""

    def __init__(self, frequencies: Dict[str, float]):
        super().__init__()
        self.frequencies = frequencies
        self.vocabulary: List[str] = []

    def forward(self, batched_inputs: List[dict]) -> List[dict]:
        scores = torch.tensor([self.frequencies.get(c, 0.0) for c in self.vocabulary])
        return [
            {"sem_seg": scores[:, None, None].expand(-1, x["height"], x["width"])}
            for x in batched_inputs
        ]


def evaluate_baseline(cfg) -> Dict[str, dict]:
    """Metrics of the frequency-prior predictor on every toy validation protocol."""
    frequencies = class_frequencies("vspw_toy_train_seen")
    top = max(frequencies, key=frequencies.get)
    print(
        f"trivial predictor: always '{top}' ({100 * frequencies[top]:.1f}% of labelled training pixels)"
    )
    model = FrequencyPrior(frequencies)
    results = {}
    for name in EVAL_SETS:
        model.vocabulary = list(MetadataCatalog.get(name).stuff_classes)
        mapper = VideoSemSegDatasetMapper(cfg, is_train=False, dataset_name=name)
        loader = build_detection_test_loader(cfg, name, mapper=mapper)
        evaluator = VideoSemSegEvaluator(name, distributed=False, vc_windows=cfg.TEST.VC_WINDOWS)
        results[name] = inference_on_dataset(model, loader, evaluator)["sem_seg"]
    return results


def print_table(title: str, results: Dict[str, dict]) -> None:
    header = f"{'dataset':<22}{'classes':>8}{'chance':>8}" + "".join(f"{c:>12}" for c in COLUMNS)
    print(f"\n{title}\n{header}\n{'-' * len(header)}")
    for name, metrics in results.items():
        n = len(MetadataCatalog.get(name).stuff_classes)
        cells = "".join(f"{metrics[c]:>12.2f}" if c in metrics else f"{'-':>12}" for c in COLUMNS)
        print(f"{name:<22}{n:>8}{100.0 / n:>8.1f}{cells}")


class _ConsoleFilter(logging.Filter):
    """On the console: training progress, evaluation tables and warnings (the rest, e.g. the
    model printout, goes to OUTPUT_DIR/log.txt only)."""

    SHOWN = ("detectron2.utils.events", "ov2vss.evaluation.video_sem_seg_evaluation")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name in self.SHOWN


def quiet_console_logging(output_dir: str) -> None:
    for name, abbrev in (("detectron2", "d2"), ("ov2vss", "ov2vss")):
        logger = setup_logger(output=output_dir, name=name, abbrev_name=abbrev)
        for handler in logger.handlers:
            if getattr(handler, "stream", None) is sys.stdout:
                handler.addFilter(_ConsoleFilter())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="configs/toy/ov2vss_tiny_cpu.yaml")
    parser.add_argument("--output-dir", default="output/toy_demo")
    parser.add_argument(
        "--root", default="", help="toy dataset root (default: $DETECTRON2_DATASETS/VSPW_toy)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated toy dataset")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    args = parser.parse_args(argv)
    quiet_console_logging(args.output_dir)
    # honour OMP_NUM_THREADS (the Makefile sets it); else both cores of the reference machine
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or min(2, os.cpu_count() or 1))

    cfg = get_ov2vss_cfg(args.config_file, args.opts)
    cfg.DATASETS.TOY.ROOT = args.root or cfg.DATASETS.TOY.ROOT or default_toy_root()
    cfg.OUTPUT_DIR = args.output_dir
    cfg.freeze()

    start = time.perf_counter()
    generate_toy_dataset(cfg.DATASETS.TOY.ROOT, seed=args.seed)
    register_toy(cfg.DATASETS.TOY.ROOT)
    print(f"toy dataset: {cfg.DATASETS.TOY.ROOT} ({time.perf_counter() - start:.1f}s)")
    baseline = evaluate_baseline(cfg)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    train_start = time.perf_counter()
    trainer.train()  # the EvalHook evaluates DATASETS.TEST at the end of training
    train_time = time.perf_counter() - train_start
    results = {name: trainer._last_eval_results[name]["sem_seg"] for name in EVAL_SETS}

    losses = trainer.storage.history("total_loss").values()
    print_table("trivial predictor (most frequent seen class)", baseline)
    print_table(
        f"OV2VSS tiny, {cfg.SOLVER.MAX_ITER} iterations on CPU ({train_time / 60:.1f} min incl. evaluation)",
        results,
    )
    first, last = np.mean([v for v, _ in losses[:20]]), np.mean([v for v, _ in losses[-20:]])
    print(f"\ntraining loss: {first:.3f} (first 20 iterations) -> {last:.3f} (last 20)")
    print(
        f"metrics.json files under {os.path.join(cfg.OUTPUT_DIR, 'inference')}; total {time.perf_counter() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
