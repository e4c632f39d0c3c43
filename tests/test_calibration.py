"""Calibrated stacking end to end: the evaluator's seen-bias sweep predicts what the model's own
MODEL.OV2VSS.SEEN_BIAS does (at a test size other than the frame size, in absolute gamma, with
the seen classes of the model's training vocabulary), in bounded memory; chunked vocabularies
give the same calibrated outputs (docs/METRICS.md, "Seen-class calibration")."""

import json
import os
import tracemalloc
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from ov2vss import VideoSemSegDatasetMapper
from ov2vss.data.datasets.register_cityscapes_video import register_cityscapes_video
from ov2vss.data.datasets.register_vspw_toy import register_toy
from ov2vss.engine import Trainer
from ov2vss.evaluation.seen_bias import SeenBiasSweep, group_mious
from ov2vss.seeding import seeded_rng
from ov2vss.vocabulary import dataset_vocabulary

ALL = "vspw_toy_val_all"
METRICS = ("mIoU-seen", "mIoU-unseen", "hIoU")
GAMMAS = (0.0, 3.0)


@pytest.fixture(scope="module")
def sharp(toy_root, tiny_cfg, tiny_train_opts, tmp_path_factory):
    """The tiny model on the toy data (48x64 frames) evaluated at test size 60, and sharpened:
    a random model scores every class almost alike, so its last layer is scaled up until its
    labels change abruptly between regions, as a trained model's do — where resizing scores
    matters. CLIP at 96 pixels gives the cost volume a 12x16 grid of regions."""
    register_toy(toy_root)
    out = tmp_path_factory.mktemp("calibration")
    opts = tiny_train_opts(toy_root, out, "INPUT.MIN_SIZE_TEST", 60, "MODEL.CLIP.INPUT_SIZE", 96)
    cfg = tiny_cfg(*opts, "DATASETS.TEST", f"('{ALL}',)", "TEST.VC_WINDOWS", "[]")
    with seeded_rng(0), torch.no_grad():
        model = build_model(cfg).eval()
        for p in model.vte.parameters():  # zero-initialised residuals: let VTE matter
            p.add_(0.05 * torch.randn_like(p))
        model.head.decoder[-1].weight.mul_(1000)
        model.head.decoder[-1].bias.mul_(1000)
    yield cfg, model, out
    register_toy()


def evaluate(cfg, model, gamma, output_dir, dataset=ALL):
    """``Trainer.test`` (as ``train_net.py --eval-only``) with MODEL.OV2VSS.SEEN_BIAS gamma:
    (plain metrics, sweep rows by absolute gamma, the whole sweep section of metrics.json)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = (dataset,)
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.MODEL.OV2VSS.SEEN_BIAS = float(gamma)
    model.set_seen_bias(gamma)  # what build_model(cfg) sets
    try:
        plain = Trainer.test(cfg, model)["sem_seg"]
    finally:
        model.set_seen_bias(0.0)
    with open(os.path.join(output_dir, "inference", dataset, "metrics.json")) as f:
        sweep = json.load(f)["seen_bias"]
    return plain, {r["bias"]: r for r in sweep["seen_bias_sweep"]}, sweep


@pytest.fixture(scope="module")
def evaluations(sharp):
    cfg, model, out = sharp
    return {g: evaluate(cfg, model, g, out / f"gamma{g:g}") for g in GAMMAS}


def close(row, metrics, abs_tol=0.01):
    return all(abs(row[k] - metrics[k]) <= abs_tol for k in METRICS)


def test_the_sweep_predicts_the_model_calibrated_at_another_test_size(sharp, evaluations):
    """The row at gamma of an uncalibrated evaluation equals an evaluation of the model with
    SEEN_BIAS gamma, frames of 48 pixels evaluated at 60 (logits resized before calibrating)."""
    cfg, model, _ = sharp
    record = DatasetCatalog.get(ALL)[0]
    inputs = VideoSemSegDatasetMapper(cfg, False, dataset_name=ALL)(record)
    assert tuple(inputs["frames"].shape[-2:]) == (60, 80)
    assert (inputs["height"], inputs["width"]) == (48, 64)  # the output size
    _, rows, _ = evaluations[0.0]
    for gamma in GAMMAS[1:]:
        calibrated = evaluations[gamma][0]
        assert close(rows[gamma], calibrated), (gamma, rows[gamma], calibrated)
    # the grid moves pixels between the groups, and no group is empty of hits
    assert len({tuple(rows[g][k] for k in METRICS) for g in (0.0, 1.0, 3.0)}) == 3
    assert all(evaluations[g][0][k] > 0 for g in GAMMAS for k in METRICS)


def test_the_sweep_is_in_absolute_gamma(evaluations):
    """An evaluation with SEEN_BIAS 3: its plain result is its own row at gamma 3, its row at 0
    is the uncalibrated evaluation, and its best gamma is the uncalibrated evaluation's."""
    plain3, rows3, sweep3 = evaluations[3.0]
    plain0, rows0, sweep0 = evaluations[0.0]
    assert sweep3["seen_bias_applied"] == 3.0 and sweep0["seen_bias_applied"] == 0.0
    assert all(rows3[3.0][k] == pytest.approx(plain3[k], rel=1e-12) for k in METRICS)
    assert close(rows3[0.0], plain0)
    assert sweep3["seen-bias-best"] == sweep0["seen-bias-best"]
    assert abs(sweep3["hIoU-best"] - sweep0["hIoU-best"]) <= 0.01


def test_a_model_gamma_off_the_grid_gets_its_row():
    sweep = SeenBiasSweep(3, [0, 1], [2], biases=[0.0, 1.0, 3.0], applied_bias=1.25)
    assert sweep.biases.tolist() == [0.0, 1.0, 1.25, 3.0]
    # classes 0, 1 seen; gaps best seen - best other: 2.4 and 1.7; GT [0, 2]
    log_p = torch.tensor([[-0.1, -2.0], [-3.0, -0.2], [-2.5, -1.9]]).view(3, 1, 2)
    sweep.process(log_p, np.array([[0, 2]]), log_probs=True)
    rows = {r["bias"]: r for r in sweep.results()["seen_bias_sweep"]}
    # at the applied gamma (nothing more subtracted) the labels are the argmax [0, 1]
    assert (rows[1.25]["mIoU-seen"], rows[1.25]["mIoU-unseen"]) == (100.0, 0.0)
    # gamma 3 subtracts 1.75 more: the second pixel (gap 1.7) moves to class 2
    assert (rows[3.0]["mIoU-seen"], rows[3.0]["mIoU-unseen"]) == (100.0, 100.0)


def _cityscapes_tree(root, size=(32, 64), seed=0):
    """Two annotated Cityscapes frames with their 30-frame snippets: random frames and labels."""
    rng = np.random.default_rng(seed)
    h, w = size
    for city, frame in (("aachen", 19), ("bonn", 40)):
        gt_dir = os.path.join(root, "gtFine", "val", city)
        seq_dir = os.path.join(root, "leftImg8bit_sequence", "val", city)
        os.makedirs(gt_dir)
        os.makedirs(seq_dir)
        ids = rng.choice([*range(19), 255], size=(h // 4, w // 4))
        labels = np.kron(ids, np.ones((4, 4), np.int64)).astype(np.uint8)
        Image.fromarray(labels).save(
            os.path.join(gt_dir, f"{city}_000000_{frame:06d}_gtFine_labelTrainIds.png")
        )
        for f in range(frame - 19, frame + 11):
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(image).save(
                os.path.join(seq_dir, f"{city}_000000_{f:06d}_leftImg8bit.png")
            )
    return root


def test_the_sweep_biases_the_classes_calibration_biases(sharp, tmp_path):
    """Cityscapes: the groups of mIoU-seen / mIoU-unseen come from the concept table (16 seen),
    calibration biases the 12 names of a VSPW-trained model's vocabulary; the sweep biases those
    12, so its row at gamma is the model calibrated with SEEN_BIAS gamma."""
    cfg, model, _ = sharp
    name = f"test_cs_calibration_{uuid.uuid4().hex[:8]}"
    register_cityscapes_video(name, _cityscapes_tree(str(tmp_path / "cityscapes")), "val")
    trained_on = model.train_class_texts
    model.train_class_texts = dataset_vocabulary("vspw_train_seen")
    try:
        meta = MetadataCatalog.get(name)
        mask = model.seen_class_mask(dataset_vocabulary(name))
        biased = [meta.stuff_classes[i] for i, s in enumerate(mask) if s]
        not_biased = [meta.stuff_classes[i] for i in meta.seen_classes if not mask[i]]
        assert len(biased) == 12 and not_biased == ["sidewalk", "fence", "vegetation", "terrain"]
        _, rows, _ = evaluate(cfg, model, 0.0, tmp_path / "plain", name)
        calibrated, _, _ = evaluate(cfg, model, 2.0, tmp_path / "calibrated", name)
    finally:
        model.train_class_texts = trained_on
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert close(rows[2.0], calibrated), (rows[2.0], calibrated)
    assert not close(rows[2.0], rows[0.0])  # the calibration moves pixels


# ---------------------------------------------------------------- the sweep's memory
def _brute_force_rows(frames, num, biased, seen, unseen, grid):
    """Per gamma, the confusion matrix of argmax(log p - gamma [biased]) -> group mIoUs."""
    is_biased = np.isin(np.arange(num), biased)[:, None, None]
    rows = []
    for gamma in grid:
        conf = np.zeros((num, num), np.int64)
        for log_p, gt in frames:
            pred = (log_p - gamma * is_biased).argmax(axis=0)
            valid = gt != 255
            conf += np.bincount(num * gt[valid] + pred[valid], minlength=num**2).reshape(num, num)
        rows.append(group_mious(conf, seen, unseen))
    return rows


def test_the_sweep_at_124_names_equals_the_argmax_at_every_gamma():
    """VSPW's size: two processes' states merged give exactly the brute-force rows, with biased
    classes other than the seen group."""
    rng = np.random.default_rng(0)
    num, seen, unseen = 124, list(range(80)), list(range(80, 124))
    biased = list(range(0, 90, 2))  # not the seen group
    grid = [-2.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0]
    frames = []
    for _ in range(4):
        log_p = np.log(rng.dirichlet(np.full(num, 0.3), size=(12, 16))).transpose(2, 0, 1)
        gt = rng.integers(0, num, (12, 16))
        gt[rng.random((12, 16)) < 0.1] = 255
        frames.append((log_p, gt))
    parts = [SeenBiasSweep(num, seen, unseen, grid, biased_classes=biased) for _ in range(2)]
    for i, (log_p, gt) in enumerate(frames):
        parts[i % 2].process(torch.from_numpy(log_p), gt, log_probs=True)
    merged = SeenBiasSweep(num, seen, unseen, grid, biased_classes=biased)
    merged.merge([p.state() for p in parts])
    rows = [
        (r["mIoU-seen"], r["mIoU-unseen"], r["hIoU"]) for r in merged.results()["seen_bias_sweep"]
    ]
    assert rows == _brute_force_rows(frames, num, biased, seen, unseen, grid)
    assert len(set(rows)) > 3


def test_the_sweep_state_stays_small_at_1000_names():
    """1000 names, the default grid: everything the sweep allocates (counts, the state sent
    between processes, temporaries of a frame) stays under 200 MB."""
    num = 1000
    tracemalloc.start()
    try:
        sweep = SeenBiasSweep(num, range(600), range(600, num))
        scores = torch.rand(num, 24, 32).softmax(0)
        sweep.process(scores, np.random.default_rng(0).integers(0, num, (24, 32)))
        state = sweep.state()
        merged = SeenBiasSweep(num, range(600), range(600, num))
        merged.merge([state])
        results = merged.results()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    sent = sum(v.nbytes for v in state.values() if isinstance(v, np.ndarray))
    assert sweep.nbytes < 200e6 and sent < 200e6 and peak < 200e6, (sweep.nbytes, sent, peak)
    assert len(results["seen_bias_sweep"]) == 81


# ---------------------------------------------------------------- chunked vocabularies
def test_chunked_vocabulary_with_templates_as_channels(tiny_cfg):
    """MODEL.CLIP.TEMPLATE_MODE channels (one cost-volume channel per template), calibrated:
    CLASS_CHUNK 3 for 8 names gives the outputs of one chunk, at an output size other than the
    frame's."""
    texts = ["red circle", "blue star", "green square", "sky", "road", "car", "tree", "cat"]
    base = ("MODEL.CLIP.TEMPLATE_MODE", "channels", "MODEL.CLIP.PROMPT_TEMPLATES", "imagenet",
            "MODEL.CLIP.INPUT_SIZE", 32, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
            "MODEL.OV2VSS.SEEN_BIAS", 1.5)  # fmt: skip
    outputs = []
    rng = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (5, 3, 40, 56), generator=rng, dtype=torch.uint8)
    inputs = [{"frames": frames[:4], "random_frame": frames[4], "height": 50, "width": 70}]
    for chunk in (3, 64):
        with seeded_rng(0):
            model = build_model(tiny_cfg(*base, "MODEL.OV2VSS.CLASS_CHUNK", chunk)).eval()
        model.train_class_texts = ["sky", "car", "blue star"]  # split over the chunks
        model.set_test_vocabulary(texts)
        with torch.no_grad():
            outputs.append(model(inputs)[0]["sem_seg"])
    assert model.head.text_channels > 1 and outputs[0].shape == (8, 50, 70)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs[0].sum(0), torch.ones(50, 70))
