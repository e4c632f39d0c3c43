#!/usr/bin/env python
"""`make demo`: the toy dataset end to end on CPU.

Generates the embedded toy dataset if needed (``DATASETS.TOY.ROOT``, default
``$DETECTRON2_DATASETS/VSPW_toy``), feeds its validation sets through the video mapper and
evaluates a frequency-prior predictor with ``VideoSemSegEvaluator`` under the three
protocols (seen / unseen / all). The predictor scores every class by its pixel frequency
in ``vspw_toy_train_seen``, so it always answers the most frequent seen class; classes never
seen in training score 0 (with the unseen-only vocabulary that is chance level). It is the
floor a trained OV2VSS model has to beat.

    python tools/run_toy_demo.py [--output-dir output/toy_demo] [--root DIR] [--seed 0]
"""

import argparse
import logging
import os
import sys
import time
from typing import Dict, List

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from torch import nn

from ov2vss import VideoSemSegDatasetMapper, VideoSemSegEvaluator, add_ov2vss_config
from ov2vss.data.datasets.register_vspw_toy import default_toy_root, register_toy
from ov2vss.data.io import read_mask, relabel
from ov2vss.data.toy import generate_toy_dataset

EVAL_SETS = ("vspw_toy_val_seen", "vspw_toy_val_unseen", "vspw_toy_val_all")
COLUMNS = ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU", "pACC", "mVC8", "mVC16")


def class_frequencies(dataset_name: str) -> Dict[str, float]:
    """Pixel frequency of every class name of ``dataset_name`` over its (relabelled) masks."""
    meta = MetadataCatalog.get(dataset_name)
    counts = np.zeros(len(meta.stuff_classes), np.int64)
    for record in DatasetCatalog.get(dataset_name):
        path = record["sem_seg_file_name"]
        labels = relabel(
            read_mask(path), meta.label_lut, path, len(meta.stuff_classes), meta.ignore_label
        )
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="output/toy_demo")
    parser.add_argument(
        "--root",
        default="",
        help="toy dataset root (default: DATASETS.TOY.ROOT or $DETECTRON2_DATASETS/VSPW_toy)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated toy dataset")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    cfg = get_cfg()
    add_ov2vss_config(cfg)
    cfg.DATASETS.TOY.ROOT = args.root or cfg.DATASETS.TOY.ROOT or default_toy_root()
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MIN_SIZE_TEST = 0  # evaluate at the generated size (96 x 160)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = args.output_dir
    cfg.freeze()

    start = time.perf_counter()
    generate_toy_dataset(cfg.DATASETS.TOY.ROOT, seed=args.seed)
    register_toy(cfg.DATASETS.TOY.ROOT)
    print(f"toy dataset: {cfg.DATASETS.TOY.ROOT} ({time.perf_counter() - start:.1f}s)")

    frequencies = class_frequencies("vspw_toy_train_seen")
    top = max(frequencies, key=frequencies.get)
    print(
        f"predictor: always the most frequent seen class, '{top}' ({100 * frequencies[top]:.1f}% of labelled training pixels)"
    )
    model = FrequencyPrior(frequencies)

    rows = []
    for name in EVAL_SETS:
        model.vocabulary = list(MetadataCatalog.get(name).stuff_classes)
        mapper = VideoSemSegDatasetMapper(cfg, is_train=False, dataset_name=name)
        loader = build_detection_test_loader(cfg, name, mapper=mapper)
        evaluator = VideoSemSegEvaluator(
            name,
            distributed=False,
            output_dir=os.path.join(cfg.OUTPUT_DIR, "inference", name),
            vc_windows=cfg.TEST.VC_WINDOWS,
        )
        metrics = inference_on_dataset(model, loader, evaluator)["sem_seg"]
        rows.append((name, len(model.vocabulary), metrics))

    header = f"{'dataset':<22}{'classes':>8}" + "".join(f"{c:>13}" for c in COLUMNS)
    print("\n" + header + "\n" + "-" * len(header))
    for name, num_classes, metrics in rows:
        cells = "".join(f"{metrics[c]:>13.2f}" if c in metrics else f"{'-':>13}" for c in COLUMNS)
        print(f"{name:<22}{num_classes:>8}{cells}")
    print(
        f"\nmetrics.json files under {os.path.join(cfg.OUTPUT_DIR, 'inference')}; total {time.perf_counter() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
