"""Streaming evaluation (TEST.STREAMING, ov2vss.evaluation.streaming) against window-by-window
evaluation (the test loader + the inference mapper): same metrics, every frame encoded once,
only the frames a window needs (whole videos per process under DDP: test_distributed.py).

Both paths are compared with oneDNN off (``torch.backends.mkldnn.flags(enabled=False)``):
window-by-window runs a window's 5 frames through the backbone as one batch, streaming one
frame at a time, and oneDNN's convolutions round differently for the two batch sizes (~1e-6
relative). A randomly initialised model has near-tied classes at many pixels (probabilities
a few float ulps apart), which such rounding flips. PyTorch's own convolutions give the same
numbers for any batch size, so the comparison below tests the streaming logic, not rounding.
"""

import json
import logging
import math
import os
import re
import sys
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import ov2vss.evaluation.streaming as streaming
from ov2vss.data.datasets.register_cityscapes_video import register_cityscapes_video
from ov2vss.data.datasets.register_vspw import register_vspw_family
from ov2vss.data.datasets.register_vspw_toy import register_toy
from ov2vss.data.prepare_vspw import prepare_vspw
from ov2vss.engine import Trainer

TOY_SET = "vspw_toy_val_all"
VC_WINDOWS = [2, 4]
VIDEO_LENGTHS = (1, 2, 5, 12)
CLASSES = ["red circle", "blue star", "green square", "yellow ring", "cyan cross"]


@pytest.fixture(scope="module", autouse=True)
def gpu_check_commands(start_command):
    """tools/gpu_check.sh's dry run and its no-GPU message, as commands started with the
    module: the streaming tests run meanwhile."""
    env = dict(os.environ, PYTHON=sys.executable)
    return {
        "dry_run": start_command("bash", "tools/gpu_check.sh", "--cpu", "--tiny", env=env),
        "no_gpu": start_command(
            "bash", "tools/gpu_check.sh", env=dict(env, CUDA_VISIBLE_DEVICES="")
        ),
    }


@pytest.fixture(scope="module")
def setup(toy_root, tiny_cfg, tiny_train_opts, tmp_path_factory):
    """The tiny config on the toy data and one randomly initialised model (its zero-initialised
    video-text-encoding residuals perturbed, so that every part of the model matters). The toy
    names point at the small toy data for the module (conftest points them back after)."""
    register_toy(toy_root)
    out = tmp_path_factory.mktemp("stream")
    cfg = tiny_cfg(*tiny_train_opts(toy_root, out, "TEST.VC_WINDOWS", str(VC_WINDOWS)))
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).eval()
    with torch.no_grad():
        for p in model.vte.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return cfg, model, out


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def evaluate(cfg, model, name, streaming_on, output_dir, batch_invariant=True):
    """Trainer.test on one dataset (oneDNN off with ``batch_invariant``: see the module
    docstring); returns (metrics, evaluator, backbone batch sizes, progress lines)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = (name,)
    cfg.TEST.STREAMING = streaming_on
    evaluator = Trainer.build_evaluator(cfg, name, output_folder=str(output_dir))
    batches, lines = [], _Lines()
    hook = model.backbone.register_forward_hook(lambda m, i, o: batches.append(i[0].shape[0]))
    logger = logging.getLogger("ov2vss.evaluation.streaming")
    level, mkldnn = logger.level, torch.backends.mkldnn.enabled
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    torch.backends.mkldnn.enabled = not batch_invariant
    # the cached text embeddings were computed by the kernels of an earlier call
    model.clip._text_cache.clear()
    try:
        results = Trainer.test(cfg, model, [evaluator])
    finally:
        torch.backends.mkldnn.enabled = mkldnn
        hook.remove()
        logger.removeHandler(lines)
        logger.setLevel(level)
    return results["sem_seg"], evaluator, batches, lines.lines


def assert_same_metrics(a, b, tol=1e-4):
    assert set(a) == set(b)
    for k in a:
        if math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert abs(a[k] - b[k]) <= tol, (k, a[k], b[k])


def test_streaming_equals_window_by_window_on_the_toy_validation_set(setup):
    cfg, model, out = setup
    frames = len(DatasetCatalog.get(TOY_SET))
    window, _, window_batches, window_lines = evaluate(cfg, model, TOY_SET, False, out / "w")
    stream, evaluator, stream_batches, stream_lines = evaluate(cfg, model, TOY_SET, True, out / "s")
    assert_same_metrics(stream, window)
    assert 0 < stream["pACC"] < 100 and 0 < stream["mVC2"] < 100  # not a degenerate prediction
    # window by window: 5 frames per window; streaming: each frame once
    assert window_batches == [5] * frames
    assert stream_batches == [1] * frames
    # frames in order: the in-order VC path, at most max(vc_windows) frames held
    assert 2 <= evaluator.peak_frames_held <= max(VC_WINDOWS)
    # progress in both modes (the end line at least)
    for lines in (window_lines, stream_lines):
        assert f"Evaluated {TOY_SET}: {frames}/{frames} frames" in lines[-1]


# ------------------------------------------------------------------ VSPW layout, 1..12 frames


def _write_vspw_tree(root, lengths, num_classes, size=(32, 48), seed=0):
    """Videos of the given lengths in the VSPW layout: a panning textured scene, raw masks of
    8x8 blocks (ids 0..num_classes, some 255) that drift by one block column per frame."""
    rng = np.random.default_rng(seed)
    h, w = size
    names = []
    for v, length in enumerate(lengths):
        name = f"video_{v}"
        scene = rng.integers(0, 256, (h, w + 3 * length, 3), dtype=np.uint8)
        blocks = rng.choice([*range(num_classes + 1), 255], size=(h // 8, w // 8 + length))
        for t in range(length):
            for sub in ("origin", "mask"):
                os.makedirs(os.path.join(root, "data", name, sub), exist_ok=True)
            frame = np.ascontiguousarray(scene[:, 3 * t : 3 * t + w])
            Image.fromarray(frame).save(os.path.join(root, "data", name, "origin", f"{t:05d}.jpg"))
            raw = np.kron(blocks[:, t : t + w // 8], np.ones((8, 8), np.int64)).astype(np.uint8)
            Image.fromarray(raw).save(os.path.join(root, "data", name, "mask", f"{t:05d}.png"))
        names.append(name)
    with open(os.path.join(root, "val.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


@pytest.fixture(scope="module")
def vspw_names(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vspw_lengths") / "VSPW")
    _write_vspw_tree(root, VIDEO_LENGTHS, len(CLASSES))
    report = prepare_vspw(root, ["val"], CLASSES, 3)
    assert not report.problems, report.problems
    prefix = f"test_stream_{uuid.uuid4().hex[:8]}"
    names = register_vspw_family(prefix, root, CLASSES, 3, splits=("val",))
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_streaming_equals_window_by_window_on_videos_of_1_to_12_frames(setup, vspw_names):
    cfg, model, out = setup
    name = next(n for n in vspw_names if n.endswith("_all"))
    records = DatasetCatalog.get(name)
    assert sorted({len(r["video_frames"]) for r in records}) == list(VIDEO_LENGTHS)
    window, _, window_batches, _ = evaluate(cfg, model, name, False, out / "vw")
    stream, evaluator, stream_batches, _ = evaluate(cfg, model, name, True, out / "vs")
    assert_same_metrics(stream, window)
    assert not math.isnan(stream["mVC4"]) and 0 < stream["mIoU-unseen"] < 100
    assert stream_batches == [1] * sum(VIDEO_LENGTHS)
    assert window_batches == [5] * sum(VIDEO_LENGTHS)
    assert evaluator.peak_frames_held == max(VC_WINDOWS)  # the 12-frame video fills it
    with open(out / "vs" / "metrics.json") as f:
        assert json.load(f)["sem_seg"]["mIoU"] == pytest.approx(stream["mIoU"])


# ------------------------------------------------------------------ Cityscapes sequences

CITYSCAPES_ANNOTATED = [
    ("frankfurt", 0, 294),  # two annotated frames of one sequence: two snippets, one video_id
    ("frankfurt", 0, 576),
    ("lindau", 0, 5),  # below frame 19: the snippet starts at frame 0 (16 frames)
]


def _write_cityscapes_tree(root, size=(32, 64), seed=0):
    rng = np.random.default_rng(seed)
    h, w = size
    for city, seq, frame in CITYSCAPES_ANNOTATED:
        gt = os.path.join(root, "gtFine", "val", city)
        seq_dir = os.path.join(root, "leftImg8bit_sequence", "val", city)
        os.makedirs(gt, exist_ok=True)
        os.makedirs(seq_dir, exist_ok=True)
        ids = rng.choice([*range(19), 255], size=(h // 8, w // 8))
        labels = np.kron(ids, np.ones((8, 8), np.int64)).astype(np.uint8)
        Image.fromarray(labels).save(
            os.path.join(gt, f"{city}_{seq:06d}_{frame:06d}_gtFine_labelTrainIds.png")
        )
        for f in range(max(0, frame - 19), frame + 11):  # the whole 30-frame snippet
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            name = f"{city}_{seq:06d}_{f:06d}_leftImg8bit.png"
            Image.fromarray(image).save(os.path.join(seq_dir, name))


def test_cityscapes_sequences_encode_only_the_frames_of_the_windows(setup, tmp_path, monkeypatch):
    cfg, model, out = setup
    root = str(tmp_path / "cityscapes")
    _write_cityscapes_tree(root)
    name = f"test_cs_stream_{uuid.uuid4().hex[:8]}"
    register_cityscapes_video(name, root, "val")
    read = []
    real_read_frame = streaming.read_frame
    monkeypatch.setattr(
        streaming, "read_frame", lambda path, fmt: read.append(path) or real_read_frame(path, fmt)
    )
    try:
        window, _, window_batches, _ = evaluate(cfg, model, name, False, out / "cw")
        stream, _, stream_batches, _ = evaluate(cfg, model, name, True, out / "cs")
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert_same_metrics(stream, window)
    assert 0 < stream["pACC"] < 100
    # per snippet: the window t-9, t-6, t-3, t (clamped at the start) and the random frame,
    # the farthest frame of the 30-frame snippet (frame 0 of the snippet, or its last frame)
    expected = {
        294: [275, 285, 288, 291, 294],  # t = 19 of 30: random frame = snippet frame 0
        576: [557, 567, 570, 573, 576],
        5: [0, 2, 5, 15],  # t = 5 of 16: window 0, 0, 2, 5; random frame = the last one
    }
    frames = [int(os.path.basename(p).split("_")[2]) for p in read]
    assert frames == [f for _, _, t in CITYSCAPES_ANNOTATED for f in expected[t]]
    assert stream_batches == [1] * len(frames)  # 14 frames encoded, not 76
    assert window_batches == [5] * len(CITYSCAPES_ANNOTATED)


# (two processes stream whole videos each, with the metrics of one: test_distributed.py)


def test_progress_lines_have_the_eta(setup):
    cfg, model, _ = setup
    lines = _Lines()
    logger = logging.getLogger("ov2vss.evaluation.streaming")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        with model.vocabulary(["red circle", "blue star"]):
            assert streaming.inference_on_videos(model, cfg, TOY_SET, None, 0.0) == {}
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    frames = len(DatasetCatalog.get(TOY_SET))
    assert len(lines.lines) == frames  # period 0: after every frame but the last, then the end
    assert lines.lines[0].startswith(f"Evaluating {TOY_SET}: 1/{frames} frames, ")
    assert re.search(r"\d s/frame, ETA \d+:\d\d:\d\d$", lines.lines[0]), lines.lines[0]
    assert lines.lines[-1].startswith(f"Evaluated {TOY_SET}: {frames}/{frames} frames in ")


def test_videos_are_split_deterministically_and_balanced():
    assert streaming.assign_videos([5, 1, 1, 3], 2) == [0, 1, 1, 1]
    assert streaming.assign_videos([2, 2, 2], 1) == [0, 0, 0]
    assert streaming.assign_videos([1], 3) == [0]


def test_streaming_errors_name_the_problem(setup, vspw_names):
    cfg, model, _ = setup
    name = vspw_names[0]
    records = DatasetCatalog.get(name)
    bad = [dict(records[0], frame_index=records[0]["frame_index"] + 1)]
    with pytest.raises(ValueError, match="does not point at it in video_frames"):
        streaming.group_videos(bad)
    with pytest.raises(ValueError, match="no video_frames"):
        streaming.group_videos([dict(records[0], video_frames=[])])
    future = cfg.clone()
    future.defrost()
    future.INPUT.TEMPORAL.REFERENCE_OFFSETS = [3, -3]
    with pytest.raises(ValueError, match="TEST.STREAMING False"):
        streaming.inference_on_videos(model, future, name, None)


# ------------------------------------------------------------------ tools/gpu_check.sh
def test_gpu_check_dry_run_prints_its_table(gpu_check_commands):
    """The GPU check's dry run on CPU (``bash tools/gpu_check.sh --cpu --tiny``, ~13 s, started
    with the module): two 3-iteration trainings of the tiny model and a 6-frame video
    evaluated both ways."""
    proc = gpu_check_commands["dry_run"]()
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("OV2VSS GPU check: CPU (dry run)") and "48x64" in lines[0]
    rows = {}
    for line in lines[3:]:
        cells = [c.strip() for c in line.split("|")]
        rows[(cells[0], cells[1])] = cells
    assert set(rows) == {
        ("train", "fp32"),
        ("train", "AMP bf16"),
        ("eval", "window-by-window"),
        ("eval", "streaming"),
    }
    for (phase, _), cells in rows.items():
        assert float(cells[2] if phase == "train" else cells[3]) > 0  # s/iter, frames/s
        assert cells[4] == "-"  # no GPU memory on CPU
        # the estimated training peak: the tiny model's parameters, gradients and AdamW states
        # (57 + 3 x 44 MiB) plus activations
        assert (float(cells[5]) > 190) if phase == "train" else cells[5] == ""
    assert "3 iters" in rows[("train", "fp32")][6]
    assert "6-frame video" in rows[("eval", "streaming")][6]


def test_gpu_check_without_a_gpu_says_how_to_run_it(gpu_check_commands):
    proc = gpu_check_commands["no_gpu"]()
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--cpu" in proc.stderr
