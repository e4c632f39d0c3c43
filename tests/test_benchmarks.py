"""The training-step and data-loader benchmarks (docs/BENCHMARKS.md): what they measure, what
they derive, their --quick runs, and the mapper's exact shortcuts they motivated."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import transforms as T
from torch import nn

from ov2vss.data.augmentation import apply_transforms, augment_window
from ov2vss.data.datasets.register_vspw import register_all_vspw
from ov2vss.engine.training_cost import (
    CONTEXT_BYTES,
    FRAGMENTATION,
    StepCost,
    activation_scaling,
    device_bytes_needed,
    estimate_peak_bytes,
    max_windows,
    measure_training_step,
)


class _TwoLayers(nn.Module):
    """x [64, 256] -> Linear(256, 512) -> ReLU -> attention over the 64 rows -> frozen
    Linear(512, 8); the loss is the mean square."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(256, 512)
        self.fc2 = nn.Linear(512, 8).requires_grad_(False)

    def forward(self, batch):
        h = torch.relu(self.fc1(torch.stack([w["x"] for w in batch])))  # [B, 64, 512]
        q = h.view(len(batch), 64, 4, 128).transpose(1, 2)  # 4 heads of 128
        h = F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape_as(h)
        return {"loss": self.fc2(h).square().mean()}


def test_a_training_step_costs_what_its_layers_say():
    model = _TwoLayers().train()
    cost = measure_training_step(model, [{"x": torch.randn(64, 256)}])
    linear1, linear2 = 2 * 64 * 256 * 512, 2 * 64 * 512 * 8
    attention = 2 * (2 * 4 * 64 * 64 * 128)  # q k^T and p v (the CPU's fused kernel)
    assert cost.forward_flops == linear1 + linear2 + attention
    # fc1's weight gradient (not its input's), fc2's input gradient only (frozen), attention x2.5
    assert cost.backward_flops == linear1 + linear2 + 5 * attention // 2
    assert cost.param_bytes == 4 * (256 * 512 + 512 + 512 * 8 + 8)
    assert cost.trainable_bytes == 4 * (256 * 512 + 512)
    # saved for backward: x, relu's output, the attention output and its logsumexp, fc2's out
    hidden = 64 * 512 * 4
    assert cost.saved_bytes >= 64 * 256 * 4 + 2 * hidden
    # the allocator's peak holds them, and the backward pass's temporaries on top
    assert cost.saved_bytes <= cost.activation_bytes < cost.saved_bytes + 8 * hidden
    assert all(p.grad is not None for p in model.fc1.parameters()) and model.fc2.weight.grad is None


def test_activations_grow_with_the_windows_and_one_and_two_windows_predict_four():
    model = _TwoLayers().train()
    one, two, four = (
        measure_training_step(model, [{"x": torch.randn(64, 256)} for _ in range(n)])
        for n in (1, 2, 4)
    )
    assert four.windows == 4 and four.forward_flops == 4 * one.forward_flops
    per_window, constant = activation_scaling(one, two)
    assert per_window > 0 and constant >= 0
    assert 3.0 < four.activation_bytes / one.activation_bytes < 4.5
    predicted = estimate_peak_bytes(0, 0, per_window, 4, constant)
    assert abs(predicted - four.activation_bytes) < 0.1 * four.activation_bytes
    # the same FLOPs under bf16 autocast
    half = measure_training_step(model, [{"x": torch.randn(64, 256)}], torch.bfloat16)
    assert half.forward_flops == one.forward_flops


def test_the_estimate_adds_params_gradients_adamw_and_windows():
    gib = 2**30
    assert estimate_peak_bytes(10 * gib, 2 * gib, 3 * gib, 4) == (10 + 3 * 2 + 4 * 3) * gib
    assert estimate_peak_bytes(10 * gib, 2 * gib, 3 * gib, 4, gib) == (10 + 6 + 12 + 1) * gib
    assert device_bytes_needed(10 * gib) == int(10 * gib * (1 + FRAGMENTATION)) + CONTEXT_BYTES
    # 24 GiB: (24 - 1) / 1.1 = 20.9 GiB for 16 GiB of state + 1.5 GiB per window -> 3 windows
    assert max_windows(10 * gib, 2 * gib, gib * 3 // 2, 24 * gib) == 3
    assert max_windows(10 * gib, 2 * gib, gib * 3 // 2, 24 * gib, gib) == 2  # + 1 GiB constant
    assert max_windows(30 * gib, 10 * gib, gib, 24 * gib) == 0
    with pytest.raises(ValueError, match="activation bytes"):
        max_windows(gib, gib, 0, 24 * gib)


def test_the_line_through_two_measurements():
    def cost(windows, activation, saved=100):
        return StepCost(windows, 0, 0, activation, saved, 0, 0, 0.0, 0.0, 0.0)

    assert activation_scaling(cost(1, 300), cost(2, 500)) == (200, 100)  # 100 + 200 / window
    assert activation_scaling(cost(1, 300), cost(2, 700)) == (400, 0)  # steeper: no constant
    # a peak set once per step (it grows by 50 a window) while autograd keeps 150 a window
    assert activation_scaling(cost(1, 300, saved=150), cost(2, 350)) == (150, 150)
    with pytest.raises(ValueError, match="different window counts"):
        activation_scaling(cost(1, 300), cost(1, 300))


# ------------------------------------------------------------------ the mapper's shortcuts
@pytest.mark.parametrize("seed", range(4))
def test_resize_then_crop_computes_the_same_pixels(seed):
    """The crop-only resize against detectron2's whole-frame resize, at random sizes, scales
    (enlarging, shrinking, unchanged), crops and flips."""
    rng = np.random.default_rng(seed)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(12, 160, 2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        scale = float(rng.choice([0.6, 1.0, rng.uniform(1.0, 2.2)]))
        new_h, new_w = max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1)
        ch, cw = int(rng.integers(1, new_h + 1)), int(rng.integers(1, new_w + 1))
        y0, x0 = int(rng.integers(0, new_h - ch + 1)), int(rng.integers(0, new_w - cw + 1))
        tfms = [T.ResizeTransform(h, w, new_h, new_w), T.CropTransform(x0, y0, cw, ch)]
        tfms.append(T.HFlipTransform(cw) if rng.random() < 0.5 else T.NoOpTransform())
        transforms = T.TransformList(tfms)
        expected = transforms.apply_image(image)
        np.testing.assert_array_equal(apply_transforms(transforms, image), expected)


def test_the_vspw_draw_on_the_shape_equals_the_draw_on_the_frame():
    """Every short side of the paper's augmentation on a 480 x 853 frame: the same draws,
    transforms, frame and label as detectron2's AugInput."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 853, 3), dtype=np.uint8)
    label = rng.integers(0, 80, (480, 853), dtype=np.uint8)
    augs = T.AugmentationList(
        [
            T.ResizeShortestEdge(list(range(240, 961, 48)), 3412, "choice"),
            T.RandomCrop("absolute", (480, 480)),
            T.RandomFlip(),
        ]
    )
    for seed in range(16):
        np.random.seed(seed)
        reference = T.AugInput(image, sem_seg=label)
        expected = augs(reference)
        np.random.seed(seed)
        transforms, frame, seg = augment_window(augs, image, label)
        assert str(transforms.transforms) == str(expected.transforms)
        np.testing.assert_array_equal(frame, reference.image)
        np.testing.assert_array_equal(seg, reference.sem_seg)


def test_the_mapper_decodes_each_frame_and_mask_once(tmp_path, monkeypatch, repo_root):
    """A training window at paper settings (unseen pixels hidden): 5 frames, and the label map
    plus 5 raw masks, each read exactly once."""
    from detectron2.data import DatasetCatalog

    import ov2vss.data.video_mapper as vm
    from ov2vss.config import get_ov2vss_cfg
    from ov2vss.data.datasets.register_vspw import register_vspw_family
    from ov2vss.data.synthetic_vspw import write_synthetic_vspw
    from ov2vss.data.vspw_classes import VSPW_NUM_SEEN, get_vspw_class_names

    root = str(tmp_path / "VSPW")
    write_synthetic_vspw(root, {"v": ("train", 16)}, (32, 56))
    register_vspw_family("bench_vspw", root, get_vspw_class_names(), VSPW_NUM_SEEN, ("train",))
    cfg = get_ov2vss_cfg(
        os.path.join(repo_root, "configs", "vspw", "ov2vss_R50.yaml"),
        ["DATASETS.TRAIN", ("bench_vspw_train_seen",), "INPUT.MIN_SIZE_TRAIN", (40, 48),
         "INPUT.CROP.SIZE", (32, 32)],  # fmt: skip
    )
    mapper = vm.VideoSemSegDatasetMapper(cfg, is_train=True)
    reads = []
    for name in ("read_frame", "read_mask"):
        real = getattr(vm, name)
        monkeypatch.setattr(vm, name, lambda path, *a, _f=real: reads.append(path) or _f(path, *a))
    np.random.seed(0)
    out = mapper(DatasetCatalog.get("bench_vspw_train_seen")[12])  # window 3, 6, 9, 12
    frames = [p for p in reads if p.endswith(".jpg")]
    masks = [p for p in reads if p.endswith(".png")]
    assert len(frames) == len(set(frames)) == 5 and len(masks) == len(set(masks)) == 6
    assert out["frames"].shape == (4, 3, 32, 32) and out["frames"].is_contiguous()


# ------------------------------------------------------------------ the --quick runs
# main(argv) of the scripts in this process: their --quick runs measure in-process anyway (the
# full runs start one process per setting); as commands, below, they only print their usage
@pytest.mark.parametrize("script", ["bench_train_step.py", "bench_loader.py"])
def test_the_scripts_start_as_commands(repo_root, script):
    """`python benchmarks/SCRIPT --help` (their imports resolve from the script's folder, as
    `make benchmark` runs them), in a few hundredths of a second: torch is imported in main."""
    proc = subprocess.run(
        [sys.executable, os.path.join(repo_root, "benchmarks", script), "--help"],
        cwd=repo_root, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {script}") and "--quick" in proc.stdout


def _bench(benchmark_script, script, *args):
    proc = benchmark_script(script, "--quick", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_train_step_benchmark_quick(benchmark_script, tmp_path):
    """The tiny config at 32 x 32 in fp32 and bf16: measured rows and the derived GPU numbers."""
    out = _bench(
        benchmark_script, "bench_train_step", "--threads", "1", "--json", str(tmp_path / "s.json")
    )
    assert "measured (CPU;" in out and "derived:" in out
    with open(tmp_path / "s.json", encoding="utf-8") as f:
        rows = json.load(f)
    assert [(r["amp"], r["ckpt"], r["crop"]) for r in rows] == [
        (False, False, 32),
        (True, False, 32),
    ]
    fp32, amp = rows
    assert fp32["forward_flops"] == amp["forward_flops"] > 1e8  # precision changes no FLOP
    assert fp32["backward_flops"] > fp32["forward_flops"]
    for r in rows:
        flops = r["forward_flops"] + r["backward_flops"]
        peak = 989e12 if r["amp"] else 67e12  # H100 SXM dense, at 40 % of it
        assert r["derived"]["s_iter"]["H100"] == pytest.approx(4 * flops / (0.4 * peak))
        assert r["flops_2"] == 2 * flops  # the two-window step
        d = r["derived"]
        per_window = max(r["activation_bytes_2"] - r["activation_bytes"], r["saved_bytes"])
        assert d["per_window_bytes"] == per_window > 0
        assert d["constant_bytes"] == max(r["activation_bytes"] - per_window, 0)
        state = r["param_bytes"] + 3 * r["trainable_bytes"]
        estimate = state + 4 * d["per_window_bytes"] + d["constant_bytes"]
        assert r["derived"]["peak_batch4_gib"] == pytest.approx(estimate / 2**30)
        assert r["derived"]["fits"]["24 GB"] < r["derived"]["fits"]["80 GB"]


def test_loader_benchmark_quick(benchmark_script, tmp_path):
    """A few 48 x 85 windows; the workers a GPU at 0.05 s/iter needs follow from the time."""
    train = [{"config": "configs/vspw/ov2vss_R50.yaml", "amp": True, "ckpt": False,
              "derived": {"s_iter": {"A100": 0.05}}}]  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(train))
    try:
        out = _bench(benchmark_script, "bench_loader", "--train-json", str(tmp_path / "train.json"),
                     "--json", str(tmp_path / "loader.json"))  # fmt: skip
    finally:  # the script registered the vspw names at its (removed) generated data
        register_all_vspw(overwrite=True)
    assert "48x85 frames" in out and "workers A100 AMP" in out
    with open(tmp_path / "loader.json", encoding="utf-8") as f:
        (row,) = json.load(f)
    assert row["cpu_ms"] > 0
    assert row["workers"]["A100 AMP"] == math.ceil(4 / 0.05 * row["cpu_ms"] / 1e3)
    assert row["workers"]["paper 3090"] == math.ceil(4 / 0.72 * row["cpu_ms"] / 1e3)
