"""Open vocabulary for real use: calibrated stacking (MODEL.OV2VSS.SEEN_BIAS), the evaluator's
seen-bias sweep and AUSUC, the PNG report, and the training-free CLIP mode."""

import json
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from ov2vss import TrainingFreePredictor, VideoSemSegDatasetMapper, VideoSemSegEvaluator
from ov2vss.checkpoint import OV2VSSCheckpointer
from ov2vss.data.io import read_mask
from ov2vss.evaluation.report import DPI, figure_size, write_evaluation_reports, write_report
from ov2vss.evaluation.seen_bias import SeenBiasSweep, ausuc, group_mious
from ov2vss.seeding import seeded_rng
from ov2vss.training_free import RandomCLIPError
from ov2vss.vocabulary import dataset_vocabulary

ALL = "vspw_toy_val_all"


@pytest.fixture(scope="module", autouse=True)
def report_without_a_display(start_command, tmp_path_factory):
    """A fresh process (~5 s of imports, started with the module: the tests run meanwhile)
    with no DISPLAY and an interactive MPLBACKEND that cannot start without one writes a
    report: ``(wait, folder)``."""
    folder = tmp_path_factory.mktemp("no_display")
    code = (
        "import sys\n"
        "from ov2vss.evaluation.report import write_report\n"
        "write_report(sys.argv[1], {'IoU-a': 10.0, 'IoU-b': 50.0, 'mIoU': 30.0}, ['a', 'b'], "
        "[0], [1])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["MPLBACKEND"] = "TkAgg"
    return start_command("python", "-c", code, folder / "r.png", env=env), folder


# ---------------------------------------------------------------- the sweep, by hand
def test_sweep_by_hand():
    """Three classes (0, 1 seen; 2 unseen), four pixels, log-probabilities given directly.

    gap = best seen - best other log-prob: A 1.5, B 2.5, C 3.5, D -0.5; a pixel takes its best
    seen class while gamma < gap. GT = [2, 0, 1, 2].
      gamma 0, 1: pred [0, 0, 1, 2] -> IoU 1/2, 1, 1/2   -> seen 75, unseen 50
      gamma 2:    pred [2, 0, 1, 2] -> all right          -> seen 100, unseen 100
      gamma 3:    pred [2, 2, 1, 2] -> IoU 0, 1, 2/3      -> seen 50, unseen 66.7
      -inf:       pred [0, 0, 1, 0] -> IoU 1/3, 1, 0      -> seen 66.7, unseen 0
      +inf:       pred [2, 2, 2, 2] -> IoU 0, 0, 1/2      -> seen 0, unseen 50
    AUSUC over (u, s) = (0, 2/3), (.5, .75), (.5, .75), (1, 1), (2/3, .5), (.5, 0):
      .5 * (2/3 + .75) / 2 + 0 + .5 * 1.75 / 2 - (1/3) * 1.5 / 2 - (1/6) * .5 / 2 = 0.5
    """
    log_p = torch.tensor(
        [[-0.5, -0.2, -3.0, -1.0], [-3.0, -4.0, -0.1, -2.0], [-2.0, -2.7, -3.6, -0.5]]
    ).view(3, 1, 4)
    gt = np.array([[2, 0, 1, 2]])
    sweep = SeenBiasSweep(3, [0, 1], [2], biases=[0, 1, 2, 3])
    sweep.process(log_p, gt, log_probs=True)
    res = sweep.results()
    rows = [(r["bias"], r["mIoU-seen"], r["mIoU-unseen"]) for r in res["seen_bias_sweep"]]
    expected = [(0, 75, 50), (1, 75, 50), (2, 100, 100), (3, 50, 200 / 3)]
    assert [pytest.approx(e) for e in expected] == rows
    limits = res["seen_bias_limits"]
    assert (limits["-inf"]["mIoU-seen"], limits["-inf"]["mIoU-unseen"]) == pytest.approx(
        (200 / 3, 0)
    )
    assert (limits["+inf"]["mIoU-seen"], limits["+inf"]["mIoU-unseen"]) == pytest.approx((0, 50))
    assert res["AUSUC"] == pytest.approx(50.0)
    assert res["hIoU-best"] == pytest.approx(100.0) and res["seen-bias-best"] == 2.0
    # the same frame given as probabilities (ignored pixels added) gives the same rows
    gt_ignored = np.array([[2, 0, 1, 2, 255]])
    sweep_probs = torch.cat([log_p.exp(), torch.full((3, 1, 1), 1 / 3)], dim=2)
    again = SeenBiasSweep(3, [0, 1], [2], biases=[0, 1, 2, 3])
    again.process(sweep_probs, gt_ignored)
    assert again.results()["seen_bias_sweep"] == res["seen_bias_sweep"]


def test_ausuc_of_a_hand_made_curve():
    # (seen, unseen) in percent: trapezoids .3 * 1.4 / 2 + .2 * .8 / 2 + .1 * .2 / 2 = 0.30
    curve = [(80, 0), (60, 30), (20, 50), (0, 60)]
    assert ausuc(curve) == pytest.approx(30.0)
    assert math.isnan(ausuc([(80, 0), (math.nan, 10)]))


def test_sweep_equals_argmax_of_calibrated_scores_with_ties():
    """Integer log-probabilities and an integer grid: exact ties everywhere; every row must be
    the plain argmax (first index on ties) of log p - gamma * [seen], merged over processes."""
    rng = np.random.default_rng(1)
    num, seen, unseen = 6, [1, 2, 4], [0, 3, 5]
    grid = [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    frames = []
    for _ in range(4):
        log_p = rng.integers(-3, 1, (num, 5, 7)).astype(np.float64)
        gt = rng.integers(0, num, (5, 7))
        gt[rng.random((5, 7)) < 0.2] = 255
        frames.append((log_p, gt))
    parts = [SeenBiasSweep(num, seen, unseen, grid) for _ in range(2)]
    for i, (log_p, gt) in enumerate(frames):
        parts[i % 2].process(torch.from_numpy(log_p), gt, log_probs=True)
    merged = SeenBiasSweep(num, seen, unseen, grid)
    merged.merge([p.state() for p in parts])
    rows = merged.results()["seen_bias_sweep"]
    is_seen = np.isin(np.arange(num), seen)[:, None, None]
    changed = set()
    for row in rows:
        conf = np.zeros((num, num), np.int64)
        for log_p, gt in frames:
            pred = (log_p - row["bias"] * is_seen).argmax(axis=0)
            valid = gt != 255
            conf += np.bincount(num * gt[valid] + pred[valid], minlength=num**2).reshape(num, num)
        expected = group_mious(conf, seen, unseen)
        assert (row["mIoU-seen"], row["mIoU-unseen"], row["hIoU"]) == expected, row
        changed.add(expected)
    assert len(changed) > 3  # the grid does move pixels


# ---------------------------------------------------------------- the sweep in the evaluator
@pytest.fixture(scope="module")
def toy(toy_root):
    """The small toy dataset registered under the toy names (restored afterwards)."""
    from ov2vss.data.datasets.register_vspw_toy import register_toy

    register_toy(toy_root)
    yield toy_root
    register_toy()


@pytest.fixture(scope="module")
def tiny_model(toy, tiny_cfg, tiny_train_opts, tmp_path_factory):
    """The tiny model with random weights (trained vocabulary: the toy seen classes)."""
    cfg = tiny_cfg(*tiny_train_opts(toy, tmp_path_factory.mktemp("tiny")))
    with seeded_rng(0):
        model = build_model(cfg)
    return cfg, model.eval()


def _records():
    return sorted(DatasetCatalog.get(ALL), key=lambda r: (r["video_id"], r["frame_index"]))


@pytest.fixture(scope="module")
def predictions(tiny_model):
    """source -> [(record, probabilities [36, H, W])]: hand-made random probabilities on the
    toy validation frames, and the tiny model's (uncalibrated) output on the first."""
    cfg, model = tiny_model
    records = _records()
    rng = torch.Generator().manual_seed(0)
    random_probs = []
    for r in records:
        h, w = read_mask(r["sem_seg_file_name"]).shape
        logits = torch.randn(36, h, w, generator=rng) * 2
        random_probs.append((r, logits.softmax(0)))
    mapper = VideoSemSegDatasetMapper(cfg, False, dataset_name=ALL)
    model_probs = []
    with torch.no_grad(), model.vocabulary(dataset_vocabulary(ALL)):
        for r in records[:1]:
            model_probs.append((r, model([mapper(r)])[0]["sem_seg"]))
    return {"random": random_probs, "tiny_model": model_probs}


def _evaluate(pairs, output_dir=None, calibrate=None):
    """Run the evaluator on (record, probabilities); ``calibrate`` = gamma: hand-made
    probabilities are first calibrated by the definition of calibrated stacking (float64:
    p * exp(-gamma [seen]), renormalised). The model's own calibration against the sweep, end
    to end: tests/test_calibration.py."""
    evaluator = VideoSemSegEvaluator(ALL, distributed=False, output_dir=output_dir)
    evaluator.reset()
    seen = torch.zeros(36, 1, 1, dtype=torch.float64)
    seen[MetadataCatalog.get(ALL).seen_classes] = 1
    for record, probs in pairs:
        if calibrate is not None:
            log_p = probs.double().log() - calibrate * seen
            probs = (log_p - log_p.logsumexp(0, keepdim=True)).exp()
        evaluator.process([{"file_name": record["file_name"]}], [{"sem_seg": probs}])
    results = evaluator.evaluate()["sem_seg"]
    write_evaluation_reports(evaluator)  # report.png beside metrics.json, as Trainer.test
    return results


def test_sweep_rows_equal_separate_calibrated_evaluations(predictions, tmp_path):
    """The sweep's bookkeeping against its definition, on random probabilities."""
    pairs = predictions["random"]
    plain = _evaluate(pairs, output_dir=str(tmp_path))
    written = json.loads((tmp_path / "metrics.json").read_text())
    sweep = written["seen_bias"]
    rows = {r["bias"]: r for r in sweep["seen_bias_sweep"]}
    assert {k: plain[k] for k in ("mIoU-seen", "mIoU-unseen", "hIoU")} == pytest.approx(
        {k: rows[0.0][k] for k in ("mIoU-seen", "mIoU-unseen", "hIoU")}, rel=1e-12
    )
    # a few grid values, each against a separate evaluation of calibrated predictions
    for gamma in (0.5, 1.0, 3.0):
        calibrated = _evaluate(pairs, calibrate=gamma)
        for key in ("mIoU-seen", "mIoU-unseen", "hIoU"):
            assert rows[gamma][key] == pytest.approx(calibrated[key], rel=1e-12), (gamma, key)
    moved = {(round(r["mIoU-seen"], 9), round(r["mIoU-unseen"], 9)) for r in rows.values()}
    assert len(moved) >= 3  # the sweep moves pixels
    best = max((r for r in rows.values() if r["bias"] >= 0), key=lambda r: r["hIoU"])
    assert sweep["hIoU-best"] == best["hIoU"] and sweep["seen-bias-best"] == best["bias"]
    curve = [sweep["seen_bias_limits"]["-inf"], *sweep["seen_bias_sweep"]]
    curve.append(sweep["seen_bias_limits"]["+inf"])
    assert sweep["AUSUC"] == pytest.approx(
        ausuc([(p["mIoU-seen"], p["mIoU-unseen"]) for p in curve])
    )
    assert curve[0]["mIoU-unseen"] == 0 and curve[-1]["mIoU-seen"] == 0
    # the PNG report beside metrics.json
    with Image.open(tmp_path / "report.png") as img:
        img.verify()


def test_sweep_gathers_across_processes(predictions, tmp_path, monkeypatch):
    """Two DDP ranks (detectron2's gather simulated, states pickled): the main process writes
    the sweep of one process that saw every frame."""
    import pickle

    from detectron2.utils import comm

    pairs = predictions["random"]
    _evaluate(pairs, output_dir=str(tmp_path / "one"))
    ranks = [VideoSemSegEvaluator(ALL, distributed=True, output_dir=str(tmp_path / "two"))]
    ranks.append(VideoSemSegEvaluator(ALL, distributed=True))
    for i, (record, probs) in enumerate(pairs):
        ranks[i % 2].process([{"file_name": record["file_name"]}], [{"sem_seg": probs}])
    sent = []
    monkeypatch.setattr(comm, "synchronize", lambda: None)
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: sent.append(pickle.dumps(data)) or [])
    assert ranks[1].evaluate() is None
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data, pickle.loads(sent[0])])
    ranks[0].evaluate()
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["seen_bias"] == one["seen_bias"] and two["sem_seg"] == one["sem_seg"]


def test_model_calibration_changes_only_seen_scores(tiny_model, predictions):
    """MODEL.OV2VSS.SEEN_BIAS inside the model: the seen classes' probabilities are scaled by
    exp(-gamma) relative to the others (ratios), outputs stay probabilities, and a vocabulary
    without a seen class is not affected."""
    cfg, model = tiny_model
    record, plain = predictions["tiny_model"][0]
    mapper = VideoSemSegDatasetMapper(cfg, False, dataset_name=ALL)
    inputs = [mapper(record)]
    meta = MetadataCatalog.get(ALL)
    seen, unseen = list(meta.seen_classes), list(meta.unseen_classes)
    assert model.seen_class_mask(dataset_vocabulary(ALL)) == [i in seen for i in range(36)]
    gamma = 2.5
    model.set_seen_bias(gamma)
    try:
        with torch.no_grad(), model.vocabulary(dataset_vocabulary(ALL)):
            calibrated = model(inputs)[0]["sem_seg"]
        unseen_only = dataset_vocabulary("vspw_toy_val_unseen")
        with torch.no_grad(), model.vocabulary(unseen_only):
            unaffected = model(inputs)[0]["sem_seg"]
    finally:
        model.set_seen_bias(0.0)
    with torch.no_grad(), model.vocabulary(unseen_only):
        reference = model(inputs)[0]["sem_seg"]
    torch.testing.assert_close(calibrated.sum(0), torch.ones_like(calibrated[0]))
    ratio = (calibrated / plain).double()  # per pixel: c * exp(-gamma) (seen), c (others)
    torch.testing.assert_close(
        ratio[seen] / ratio[unseen[0]],
        torch.full_like(ratio[seen], math.exp(-gamma)),
        rtol=1e-4,
        atol=0,
    )
    torch.testing.assert_close(
        ratio[unseen] / ratio[unseen[0]], torch.ones_like(ratio[unseen]), rtol=1e-4, atol=0
    )
    assert not torch.equal(calibrated.argmax(0), plain.argmax(0))
    assert torch.equal(unaffected, reference)


def test_training_vocabulary_survives_a_checkpoint_round_trip(tiny_model, tiny_cfg, tmp_path):
    cfg, model = tiny_model
    OV2VSSCheckpointer(model, str(tmp_path)).save("model")
    path = str(tmp_path / "model.pth")
    demo_cfg = tiny_cfg(
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.OV2VSS.TEST_VOCABULARY", "['a']"
    )
    fresh = build_model(demo_cfg)
    assert fresh.train_class_texts == []
    OV2VSSCheckpointer(fresh, strict=True, config=demo_cfg).load(path)
    assert (
        fresh.train_class_texts
        == model.train_class_texts
        == dataset_vocabulary("vspw_toy_train_seen")
    )
    # a checkpoint written before the vocabulary was saved still loads (strictly), without one
    old = torch.load(path, weights_only=True)
    del old["train_class_texts"]
    torch.save(old, tmp_path / "old.pth")
    older = build_model(demo_cfg)
    OV2VSSCheckpointer(older, strict=True, config=demo_cfg).load(str(tmp_path / "old.pth"))
    assert older.train_class_texts == []


@pytest.mark.parametrize("gamma", [-1.0, float("nan"), float("inf"), "big"])
def test_bad_seen_bias_is_a_clear_error(gamma, tiny_model, tiny_cfg):
    _, model = tiny_model
    with pytest.raises(ValueError, match="MODEL.OV2VSS.SEEN_BIAS"):
        model.set_seen_bias(gamma)
    assert model.seen_bias == 0.0
    if gamma == -1.0:
        with pytest.raises(ValueError, match=r"MODEL\.OV2VSS\.SEEN_BIAS=-1\.0"):
            build_model(tiny_cfg("MODEL.OV2VSS.SEEN_BIAS", "-1.0"))


# ---------------------------------------------------------------- the PNG report
def test_report_png_has_the_expected_size(tmp_path):
    names = [f"class number {i}" for i in range(124)]
    metrics = {f"IoU-{n}": float(i % 97) for i, n in enumerate(names)}
    metrics[f"IoU-{names[5]}"] = math.nan  # absent from the GT: not drawn
    metrics.update({"mIoU": 40.0, "mIoU-seen": 50.0, "mIoU-unseen": 20.0, "hIoU": 28.6})
    sweep = SeenBiasSweep(124, range(80), range(80, 124), biases=[0, 1, 2])
    sweep.process(torch.rand(124, 4, 4), np.arange(16).reshape(4, 4))
    path = write_report(
        str(tmp_path / "r.png"), metrics, names, range(80), range(80, 124), sweep.results()
    )
    width, height = figure_size(123, max(len(n) for n in names), True)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (round(width * DPI), round(height * DPI))
    assert height * DPI >= 20 * 123  # 124 names: a bar of >= 20 px each
    # without a sweep: the bars only (7 of the 8 classes: names[5] is absent)
    path = write_report(str(tmp_path / "s.png"), metrics, names[:8], [], range(8))
    with Image.open(path) as img:
        assert img.size == tuple(round(x * DPI) for x in figure_size(7, len(names[0]), False))


def test_report_works_without_a_display(report_without_a_display):
    """No DISPLAY and an interactive MPLBACKEND that cannot start without one: the report
    draws on the Agg canvas directly."""
    wait, folder = report_without_a_display
    proc = wait()
    assert proc.returncode == 0, proc.stderr
    with Image.open(folder / "r.png") as img:
        img.verify()


# ---------------------------------------------------------------- training-free mode
@pytest.fixture(scope="module")
def free_cfg(tiny_cfg):
    # 32x48 frames at CLIP input size 32, patch 8: a 4x6 grid with no resizing
    return tiny_cfg("MODEL.CLIP.INPUT_SIZE", "32", "MODEL.CLIP.DENSE_MODE", "qk")


def _direct_cost_volume(clip_model, texts, frame):
    """cos(text, "vv" dense feature) from open_clip's own forward: its position embedding
    resized (bicubic) from the 96-pixel tower's 12x12 grid to the frame's 4x6, and its last
    image block run with a mask that lets each token attend only to itself, which makes the
    block x + out_proj(v), then its FFN residual (the value path)."""
    import open_clip

    tokens = open_clip.get_tokenizer("OV2VSS-Tiny-CLIP")([f"a photo of a {t}." for t in texts])
    text = F.normalize(clip_model.encode_text(tokens).float(), dim=-1)
    visual = clip_model.visual
    mean = torch.tensor(visual.image_mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(visual.image_std).view(1, 3, 1, 1) * 255
    x = (torch.from_numpy(frame).permute(2, 0, 1)[None].float() - mean) / std
    gh, gw = frame.shape[0] // 8, frame.shape[1] // 8  # patch 8
    pos = visual.positional_embedding
    grid = pos[1:].reshape(1, 12, 12, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
    resized = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)])
    self_only = torch.full((gh * gw + 1,) * 2, float("-inf")).fill_diagonal_(0.0)
    handle = visual.transformer.resblocks[-1].register_forward_pre_hook(
        lambda _m, args, kwargs: (args, {**kwargs, "attn_mask": self_only}), with_kwargs=True
    )
    visual.positional_embedding = torch.nn.Parameter(resized, requires_grad=False)
    visual.output_tokens = True
    try:
        _, patch_tokens = visual(x)  # after ln_post
    finally:
        visual.positional_embedding, visual.output_tokens = pos, False
        handle.remove()
    dense = patch_tokens @ visual.proj  # [1, gh*gw, D]
    dense = F.normalize(dense[0], dim=-1).T.reshape(-1, gh, gw)
    return torch.einsum("nd,dhw->nhw", text, dense)


def test_training_free_is_the_argmax_of_the_cosine_cost_volume(free_cfg):
    texts = ["red circle", "blue star", "green square", "sky"]
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(4)]
    per_frame = TrainingFreePredictor(free_cfg, temporal_window=1, allow_random_clip=True)
    per_frame.model.set_test_vocabulary(texts)
    assert per_frame.model.clip.dense_mode == "vv"  # whatever MODEL.CLIP.DENSE_MODE says
    with torch.no_grad():
        direct = [_direct_cost_volume(per_frame.model.clip.model, texts, f) for f in frames]
        outs = list(per_frame.run(frames))
    for out, cost in zip(outs, direct):
        torch.testing.assert_close(out["cost_volume"], cost, rtol=1e-4, atol=1e-5)
        up = F.interpolate(cost[None], size=(32, 48), mode="bilinear", align_corners=False)[0]
        assert torch.equal(out["sem_seg"].argmax(0), up.argmax(0))
        torch.testing.assert_close(out["sem_seg"].sum(0), torch.ones(32, 48))
    assert len({tuple(o["sem_seg"].argmax(0).flatten().tolist()) for o in outs}) == 4

    # k = 3: the mean of the last (up to) three frames' cost volumes
    windowed = TrainingFreePredictor(
        free_cfg, temporal_window=3, allow_random_clip=True, model=per_frame.model
    )
    with torch.no_grad():
        outs = list(windowed.run(frames))
    for t, out in enumerate(outs):
        expected = torch.stack(direct[max(0, t - 2) : t + 1]).mean(0)
        torch.testing.assert_close(out["cost_volume"], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(outs[3]["cost_volume"], direct[3])


def test_training_free_refuses_random_clip_and_bad_windows(free_cfg):
    with pytest.raises(
        RandomCLIPError, match=r"MODEL\.CLIP\.PRETRAINED is empty.*--allow-random-clip"
    ):
        TrainingFreePredictor(free_cfg)
    with pytest.raises(ValueError, match="--temporal-window"):
        TrainingFreePredictor(free_cfg, temporal_window=0, allow_random_clip=True)


# ---------------------------------------------------------------- the demo's options
# a vocabulary mixing classes the checkpoint was trained on (red star, green ring) with new ones
MIXED = "red circle, red star, blue star, green ring"


@pytest.fixture(scope="module")
def demo_runs(tiny_config_file, tiny_cfg, tmp_path_factory):
    """case -> the demo's summary (or its SegmentationError), run in-process through
    :func:`ov2vss.video_segmentation.segment_video`, what ``demo/demo.py`` runs."""
    from ov2vss.video_segmentation import SegmentationConfig, SegmentationError, segment_video

    tmp = tmp_path_factory.mktemp("demo_options")
    frames = tmp / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(frames / f"{i}.png")
    with seeded_rng(0):
        model = build_model(tiny_cfg())  # trained vocabulary: the toy seen classes
    OV2VSSCheckpointer(model, str(tmp)).save("trained")
    base = dict(config_file=tiny_config_file, inputs=[str(frames)])
    trained = ["MODEL.WEIGHTS", str(tmp / "trained.pth")]
    cases = {
        "random_clip": dict(vocabulary="car, road", training_free=True),
        "negative_bias": dict(vocabulary="car, road", seen_bias=-1.0),
        "plain": dict(vocabulary=MIXED, output=str(tmp / "plain"), opts=trained),
        "calibrated": dict(vocabulary=MIXED, seen_bias=2.0, output=str(tmp / "calibrated"),
                           opts=trained),
        "training_free": dict(vocabulary="car, road", training_free=True,
                              allow_random_clip=True, temporal_window=2,
                              output=str(tmp / "free")),
    }  # fmt: skip
    runs = {}
    for name, options in cases.items():
        try:
            runs[name] = segment_video(SegmentationConfig(**base, **options))
        except SegmentationError as e:
            runs[name] = e
    return tmp, runs


def test_demo_refuses_random_clip_and_a_negative_seen_bias(demo_runs):
    _, runs = demo_runs
    for case, pattern in (
        ("random_clip", r"^--training-free .*MODEL\.CLIP\.PRETRAINED is empty: random "
                        r"CLIP weights would make every label noise.*--allow-random-clip"),
        ("negative_bias", r"^--seen-bias must be a finite number >= 0 "
                          r"\(MODEL\.OV2VSS\.SEEN_BIAS\), got -1\.0$"),
    ):  # fmt: skip
        error = runs[case]
        assert isinstance(error, Exception) and error.summary is None, error
        assert re.search(pattern, str(error)), str(error)


def test_demo_calibrated_and_training_free_runs(demo_runs):
    """--seen-bias 2 on a checkpoint trained on the toy seen classes: pixels move from the two
    seen names to the two new ones, compared with the same run without it."""
    tmp, runs = demo_runs
    plain, calibrated = runs["plain"], runs["calibrated"]
    assert calibrated["seen_bias"] == 2.0 and calibrated["mode"] == "ov2vss"
    assert plain["seen_bias"] == 0.0
    seen = ("red star", "green ring")
    share = {
        k: sum(r["pixel_share"][n] for n in seen) for k, r in (("p", plain), ("c", calibrated))
    }
    assert share["c"] < share["p"], (plain["pixel_share"], calibrated["pixel_share"])
    assert json.loads((tmp / "calibrated" / "summary.json").read_text()) == calibrated
    free = runs["training_free"]
    assert free["mode"] == "training-free" and free["weights"] is None
    assert "labels are noise" in free["weights_warning"]
    assert sorted(p.name for p in (tmp / "free").glob("*.png")) == ["0.png", "1.png", "2.png"]
