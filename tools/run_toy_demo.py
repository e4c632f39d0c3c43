#!/usr/bin/env python
"""`make demo`: OV2VSS trained and evaluated on the embedded toy dataset, on CPU.

1. Generates the toy dataset if needed (``$DETECTRON2_DATASETS/VSPW_toy``; compositional
   "colour shape" classes, 8 of 36 held out of training).
2. Evaluates a trivial frequency-prior predictor (always the most frequent seen class) — the
   floor the model has to beat.
3. Trains the tiny config (configs/toy/ov2vss_tiny_cpu.yaml: R-18, random tiny CLIP) with
   the Trainer of ``train_net.py`` (:class:`ov2vss.engine.Trainer`) on ``vspw_toy_train_seen`` (seen vocabulary only), then evaluates on
   ``vspw_toy_val_unseen`` (8 unseen names only), ``_seen`` and ``_all`` (36 names, hIoU).
4. Prints both metric tables side by side, with the chance level of each vocabulary, and a
   calibrated row for ``vspw_toy_val_all``: the seen bias gamma (MODEL.OV2VSS.SEEN_BIAS) with
   the best hIoU in the evaluator's seen-bias sweep on that same toy validation split.
5. Writes a strip of toy validation frames (OUTPUT_DIR/toy_strip.png): input, ground truth,
   prediction with the unseen-only vocabulary, calibrated prediction with all 36 names; and
   a PNG report beside every metrics.json.

    python tools/run_toy_demo.py [--config-file ...] [--output-dir output/toy_demo] [opts ...]
"""

import ov2vss  # noqa: F401  isort: skip  (first: registers everything, quiets import noise)
import argparse
import glob
import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.utils.logger import setup_logger
from PIL import Image
from torch import nn

from ov2vss import VideoSemSegDatasetMapper, VideoSemSegEvaluator
from ov2vss.config import get_ov2vss_cfg
from ov2vss.data.datasets.register_vspw_toy import default_toy_root, register_toy
from ov2vss.data.io import read_mask
from ov2vss.data.toy import generate_toy_dataset
from ov2vss.engine import Trainer  # the Trainer train_net.py runs
from ov2vss.engine import unwrap_model
from ov2vss.evaluation.report import compose_strip
from ov2vss.visualization import blend_labels, class_colors, draw_legend
from ov2vss.vocabulary import dataset_vocabulary

EVAL_SETS = ("vspw_toy_val_unseen", "vspw_toy_val_seen", "vspw_toy_val_all")
COLUMNS = ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU", "pACC", "mVC8", "mVC16")
CALIBRATED_SET = "vspw_toy_val_all"  # the protocol with seen and unseen classes


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


def print_table(
    title: str, results: Dict[str, dict], extra_rows: Sequence[Tuple[str, str, dict]] = ()
) -> None:
    """One row per dataset, then ``extra_rows`` = (label, dataset, metrics)."""
    header = f"{'dataset':<22}{'classes':>8}{'chance':>8}" + "".join(f"{c:>12}" for c in COLUMNS)
    print(f"\n{title}\n{header}\n{'-' * len(header)}")
    rows = [(name, name, metrics) for name, metrics in results.items()] + list(extra_rows)
    for label, name, metrics in rows:
        n = len(MetadataCatalog.get(name).stuff_classes)
        cells = "".join(f"{metrics[c]:>12.2f}" if c in metrics else f"{'-':>12}" for c in COLUMNS)
        print(f"{label:<22}{n:>8}{100.0 / n:>8.1f}{cells}")


def seen_bias_best(output_dir: str, name: str = CALIBRATED_SET) -> Optional[Tuple[float, float]]:
    """The seen bias with the best hIoU in the evaluator's sweep on ``name`` (its metrics.json;
    absolute gammas, docs/METRICS.md) and that hIoU."""
    path = os.path.join(output_dir, "inference", name, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        sweep = json.load(f).get("seen_bias") or {}
    if sweep.get("seen-bias-best") is None:
        return None
    return sweep["seen-bias-best"], sweep["hIoU-best"]


def evaluate_calibrated(cfg, model: nn.Module, gamma: float) -> dict:
    """Metrics of ``model`` on CALIBRATED_SET with MODEL.OV2VSS.SEEN_BIAS = ``gamma``
    (written to OUTPUT_DIR/inference/<set>_calibrated)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = (CALIBRATED_SET,)
    cfg.MODEL.OV2VSS.SEEN_BIAS = float(gamma)
    cfg.freeze()
    folder = os.path.join(cfg.OUTPUT_DIR, "inference", CALIBRATED_SET + "_calibrated")
    evaluator = Trainer.build_evaluator(cfg, CALIBRATED_SET, output_folder=folder)
    unwrap_model(model).set_seen_bias(gamma)
    try:
        return Trainer.test(cfg, model, [evaluator])["sem_seg"]
    finally:
        unwrap_model(model).set_seen_bias(0.0)


@torch.no_grad()
def write_toy_strip(cfg, model: nn.Module, gamma: float, path: str, num_rows: int = 3) -> str:
    """A strip of toy validation frames (one per video, those with the most unseen pixels):
    input | ground truth | prediction with the unseen-only vocabulary | prediction with all
    names, calibrated by ``gamma``. Unseen classes are marked "(unseen)" in the legends; pixels
    the ground truth ignores (the background) are left dark in every panel."""
    model = unwrap_model(model)
    meta = MetadataCatalog.get(CALIBRATED_SET)
    names = list(meta.stuff_classes)
    unseen = set(int(c) for c in meta.unseen_classes)
    unseen_set = "vspw_toy_val_unseen"
    unseen_names = MetadataCatalog.get(unseen_set).stuff_classes
    unseen_to_full = np.array([names.index(n) for n in unseen_names])
    best: Dict[str, Tuple[int, dict]] = {}
    for record in DatasetCatalog.get(CALIBRATED_SET):
        labels = read_mask(record["sem_seg_file_name"])
        count = int(np.isin(labels, sorted(unseen)).sum())
        if count > best.get(record["video_id"], (-1, None))[0]:
            best[record["video_id"]] = (count, record)
    chosen = sorted(best.values(), key=lambda x: (-x[0], x[1]["video_id"]))[:num_rows]

    marked = [f"{n} (unseen)" if i in unseen else n for i, n in enumerate(names)] + ["ignored"]
    colors = np.concatenate([class_colors(len(names)), np.zeros((1, 3), np.uint8)])
    mapper = VideoSemSegDatasetMapper(cfg, is_train=False, dataset_name=CALIBRATED_SET)
    scale = 3  # toy frames are tiny: enlarge so that the legends are legible
    was_training = model.training
    model.eval()
    rows = []
    try:
        for _, record in chosen:
            inputs = [mapper(record)]
            with model.vocabulary(dataset_vocabulary(unseen_set)):
                only_unseen = unseen_to_full[model(inputs)[0]["sem_seg"].argmax(0).cpu().numpy()]
            model.set_seen_bias(gamma)
            try:
                with model.vocabulary(dataset_vocabulary(CALIBRATED_SET)):
                    calibrated = model(inputs)[0]["sem_seg"].argmax(0).cpu().numpy()
            finally:
                model.set_seen_bias(0.0)
            gt = read_mask(record["sem_seg_file_name"]).astype(np.int64)
            ignored = gt == meta.ignore_label  # the toy background: scored nowhere, left dark
            gt[ignored] = only_unseen[ignored] = calibrated[ignored] = len(names)
            frame = np.asarray(Image.open(record["file_name"]).convert("RGB"))
            big = lambda a: np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)  # noqa: E731
            image = big(frame)
            grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
            panels = [image]
            for labels in (gt, only_unseen, calibrated):  # colours on grey, legend beside
                legend = np.full((image.shape[0], 260, 3), 40, np.uint8)
                draw_legend(legend, big(labels), marked, colors)
                overlay = blend_labels(grey, big(labels), colors, 0.6)
                panels.append(np.concatenate([overlay, legend], axis=1))
            rows.append(panels)
    finally:
        model.train(was_training)
    titles = [
        "input",
        "ground truth",
        f"unseen-only vocabulary ({len(unseen_to_full)} names)",
        f"all {len(names)} names, calibrated gamma={gamma:g}",
    ]
    Image.fromarray(compose_strip(rows, titles)).save(path)
    return path


class _ConsoleFilter(logging.Filter):
    """On the console: training progress, evaluation tables and warnings (the rest, e.g. the
    model printout, goes to OUTPUT_DIR/log.txt only)."""

    SHOWN = (
        "detectron2.utils.events",
        "ov2vss.evaluation.video_sem_seg_evaluation",
        "ov2vss.evaluation.streaming",  # evaluation progress: frames done / total, ETA
    )

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
    # honour OMP_NUM_THREADS when set (one thread: bitwise repeatable); else two cores
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
    # calibrated stacking: the sweep's best gamma on the toy validation split itself
    best = seen_bias_best(cfg.OUTPUT_DIR)
    extra, strip = [], None
    if best is not None:
        gamma, predicted = best
        calibrated = evaluate_calibrated(cfg, trainer.model, gamma)
        extra = [(f"{CALIBRATED_SET} g={gamma:g}", CALIBRATED_SET, calibrated)]
        strip_path = os.path.join(cfg.OUTPUT_DIR, "toy_strip.png")
        strip = write_toy_strip(cfg, trainer.model, gamma, strip_path)
    print_table("trivial predictor (most frequent seen class)", baseline)
    title = f"OV2VSS tiny, {cfg.SOLVER.MAX_ITER} iterations on CPU ({train_time / 60:.1f} min incl. evaluation)"
    if extra:
        title += (
            f"\nlast row: calibrated, seen bias g={gamma:g} (MODEL.OV2VSS.SEEN_BIAS) chosen on the "
            "toy validation split itself by the seen-bias sweep (best hIoU): optimistic. The "
            f"sweep predicted hIoU {predicted:.2f} at g={gamma:g}; the calibrated run gives "
            f"{calibrated['hIoU']:.2f}"
        )
    print_table(title, results, extra)
    first, last = np.mean([v for v, _ in losses[:20]]), np.mean([v for v, _ in losses[-20:]])
    print(f"\ntraining loss: {first:.3f} (first 20 iterations) -> {last:.3f} (last 20)")
    inference_dir = os.path.join(cfg.OUTPUT_DIR, "inference")
    print(f"metrics.json files and their PNG reports under {inference_dir}:")
    for report in sorted(glob.glob(os.path.join(inference_dir, "*", "report.png"))):
        print(f"  {report}")
    if strip:
        print(f"toy validation frames (input, GT, unseen-only, calibrated): {strip}")
    print(f"total {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
