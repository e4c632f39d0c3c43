"""`make demo` (tools/run_toy_demo.py) end to end at smoke size: the small toy dataset,
3 training iterations of 48x64 windows; the printed tables, the calibrated row and the strip
of validation frames (docs/TOY.md says what they mean)."""

import importlib
import json
import logging
import os
import re

import numpy as np
import pytest
from PIL import Image

from ov2vss.data.toy import generate_toy_dataset

EVAL_SETS = ("vspw_toy_val_unseen", "vspw_toy_val_seen", "vspw_toy_val_all")


@pytest.fixture
def quiet_loggers_restored():
    """run_toy_demo sets up the detectron2 and ov2vss loggers (handlers, no propagation):
    undone afterwards so that other tests' log capture still works."""
    loggers = [logging.getLogger(n) for n in ("detectron2", "ov2vss")]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    yield
    for lg, (handlers, propagate, level) in zip(loggers, saved):
        for handler in lg.handlers:
            if handler not in handlers:
                handler.close()
        lg.handlers[:], lg.propagate = handlers, propagate
        lg.setLevel(level)


def test_toy_demo_prints_both_tables_the_calibrated_row_and_writes_the_strip(
    toy_root, toy_params, tiny_train_opts, tmp_path, monkeypatch, capsys, quiet_loggers_restored
):
    demo = importlib.import_module("tools.run_toy_demo")  # pyproject.toml: the checkout's path
    generated = []

    def small_toy(root, seed=0):  # the script's own call, on the small toy parameters
        generated.append((root, seed))
        generate_toy_dataset(root, **dict(toy_params, seed=seed))

    monkeypatch.setattr(demo, "generate_toy_dataset", small_toy)
    out = tmp_path / "demo"
    opts = tiny_train_opts(toy_root, out, "SOLVER.MAX_ITER", 3)
    assert demo.main(["--root", toy_root, "--output-dir", str(out), *opts]) == 0
    printed = capsys.readouterr().out
    assert generated == [(toy_root, 0)]
    assert f"toy dataset: {toy_root}" in printed

    # the trivial predictor's table, then the model's, one row per protocol
    trivial, model = printed.split("trivial predictor (most frequent seen class)\n")[1].split(
        "OV2VSS tiny, 3 iterations on CPU"
    )
    classes = {"vspw_toy_val_unseen": 8, "vspw_toy_val_seen": 28, "vspw_toy_val_all": 36}
    for table in (trivial, model):
        for name in EVAL_SETS:
            row = re.search(rf"^{name} +(\d+) +([\d.]+) +([\d.]+)", table, re.M)
            assert row, (name, table)
            assert (int(row[1]), float(row[2])) == (classes[name], round(100 / classes[name], 1))
    for name in EVAL_SETS:  # the model's rows are its metrics.json files
        with open(out / "inference" / name / "metrics.json") as f:
            metrics = json.load(f)["sem_seg"]
        assert re.search(rf"^{name} +\d+ +[\d.]+ +{metrics['mIoU']:.2f} ", model, re.M), name

    # the calibrated row: the sweep's best gamma on vspw_toy_val_all, evaluated with it
    with open(out / "inference" / "vspw_toy_val_all" / "metrics.json") as f:
        gamma = json.load(f)["seen_bias"]["seen-bias-best"]
    with open(out / "inference" / "vspw_toy_val_all_calibrated" / "metrics.json") as f:
        calibrated = json.load(f)["sem_seg"]
    row = re.search(rf"^vspw_toy_val_all g={gamma:g} +36 +2\.8 +([\d.]+) ", model, re.M)
    assert row and float(row[1]) == pytest.approx(calibrated["mIoU"], abs=0.006), model
    assert f"seen bias g={gamma:g} (MODEL.OV2VSS.SEEN_BIAS)" in model
    assert re.search(r"training loss: [\d.]+ \(first 20 iterations\) -> [\d.]+", printed)

    # the strip: 3 validation videos (rows) x input, ground truth, unseen-only, calibrated
    strip = out / "toy_strip.png"
    assert f"(input, GT, unseen-only, calibrated): {strip}" in printed
    with Image.open(strip) as img:
        picture = np.asarray(img.convert("RGB"))
    h, w = toy_params["image_size"]
    assert picture.shape[0] > 3 * 3 * h and picture.shape[1] > 4 * 3 * w  # frames enlarged x3
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 50  # not a blank picture
    reports = sorted(
        p.split(os.sep)[-2] for p in re.findall(r"^  (\S+report\.png)$", printed, re.M)
    )
    assert reports == sorted([*EVAL_SETS, "vspw_toy_val_all_calibrated"])
