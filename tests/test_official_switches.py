"""The switches that set OV2VSS to the official code's choices (docs/OFFICIAL_CODE.md), each
off by default, and the preset configs/vspw/ov2vss_sam_vitb_official.yaml
that turns them all on.

Model switches: each one changes the output and keeps a gradient on every parameter; the
prompt templates as cost-volume channels, P2T pooling by ratios (token counts as the official
formula), streaming with them. Schedule: gradient accumulation equals one large batch (a toy
float64 model through the same step trainer, also under 2-process DDP), weight decay groups.
Data: reversed windows and per-frame photometric draws (no new random draw when off).
"""

import os
from typing import Dict, List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import SimpleTrainer, default_argument_parser
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from PIL import Image
from torch import nn

import ov2vss  # noqa: F401  (registers the model and the toy dataset names)
from ov2vss import VideoPredictor
from ov2vss.config import get_ov2vss_cfg
from ov2vss.data import VideoSemSegDatasetMapper
from ov2vss.data.augmentation import (
    WindowColorAugmentation,
    build_augmentation,
    build_frame_color_augmentation,
)
from ov2vss.data.frame_sampling import select_random_frame, window_indices
from ov2vss.engine import StepTrainer, Trainer, build_step_trainer, setup
from ov2vss.modeling import P2TPooling, RandomFrameEnhancement, SpatialTemporalContextFusion
from ov2vss.modeling.clip import template_mean
from ov2vss.modeling.video_text_encoding import cosine_cost_volume
from ov2vss.solver import build_param_groups

SMALL = ("MODEL.CLIP.INPUT_SIZE", 32, "MODEL.OV2VSS.HIDDEN_DIM", 32)
VOCAB = ["red circle", "blue star", "green square", "yellow cross"]
PRESET = "configs/vspw/ov2vss_sam_vitb_official.yaml"


def make_batch(bsz: int = 1, size=(64, 96), num_classes: int = 28, seed: int = 1) -> List[Dict]:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    return [
        {
            "frames": torch.randint(0, 256, (4, 3, h, w), generator=g, dtype=torch.uint8),
            "random_frame": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
            "sem_seg": torch.randint(0, num_classes, (h, w), generator=g),
            "height": h,
            "width": w,
        }
        for _ in range(bsz)
    ]


def wake_zero_init_layers(model: nn.Module) -> None:
    """VTE's residual branches start at zero; small weights let them (and the layers before
    them) matter, for outputs and gradients."""
    if model.vte is not None:
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p in (model.vte.attn.out_proj.weight, model.vte.ffn[-1].weight):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def dead_params(model: nn.Module) -> List[str]:
    return [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))
    ]


def head_logits(model: nn.Module, batch: List[Dict]) -> torch.Tensor:
    seen = []
    handle = model.head.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad(), model.vocabulary(VOCAB):
            model.eval()(batch)
    finally:
        handle.remove()
    return seen[0]


# ------------------------------------------------------------------------ model switches
# (the reference config, the switched config): the reference differs only in the switch
MODEL_SWITCHES = {
    "templates_as_channels": (
        ["MODEL.CLIP.PROMPT_TEMPLATES", "vild"],
        ["MODEL.CLIP.PROMPT_TEMPLATES", "vild", "MODEL.CLIP.TEMPLATE_MODE", "channels"],
    ),
    "pool_by_ratios": (
        ["MODEL.OV2VSS.STCF.AGGREGATE", "shared"],
        ["MODEL.OV2VSS.STCF.AGGREGATE", "shared", "MODEL.OV2VSS.POOL_MODE", "ratio"],
    ),
    "stcf_shared_aggregation": ([], ["MODEL.OV2VSS.STCF.AGGREGATE", "shared"]),
    "rfe_conv3x3_regions": ([], ["MODEL.OV2VSS.RFE.REGION_HEAD", "conv3x3"]),
    "rfe_81_regions": ([], ["MODEL.OV2VSS.RFE.NUM_REGIONS", 81]),
}


@pytest.mark.parametrize("name", sorted(MODEL_SWITCHES))
def test_every_model_switch_changes_the_output_and_trains(name, tiny_cfg):
    ref_opts, opts = MODEL_SWITCHES[name]
    torch.manual_seed(0)
    ref = build_model(tiny_cfg(*SMALL, *ref_opts))
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*SMALL, *opts))
    wake_zero_init_layers(ref)
    # every tensor the switch leaves alone gets the reference's value: only the switch differs
    own = model.state_dict()
    shared = {k: v for k, v in ref.state_dict().items() if k in own and own[k].shape == v.shape}
    assert len(shared) > 0.8 * len(own)
    model.load_state_dict(shared, strict=False)
    batch = make_batch()
    diff = (head_logits(model, batch) - head_logits(ref, batch)).abs().max()
    assert diff > 1e-4, f"{name}: the switch does not change the logits ({diff:.2e})"
    # every trainable parameter gets a gradient (DDP refuses unused ones)
    model.train()
    model.zero_grad()
    losses = model(make_batch(bsz=2, size=(64, 64)))
    sum(losses.values()).backward()
    assert not dead_params(model), f"{name}: no gradient reaches {dead_params(model)}"


def test_templates_as_channels_give_t_channels_per_class(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(
        tiny_cfg(
            *SMALL, "MODEL.CLIP.PROMPT_TEMPLATES", "vild", "MODEL.CLIP.TEMPLATE_MODE", "channels"
        )
    )
    costs = []
    model.head.register_forward_pre_hook(lambda _m, args: costs.append(args[0]))
    head_logits(model, make_batch(bsz=2))
    assert model.head.cost_conv[0].in_channels == 14  # ViLD's 14 templates
    assert costs[0].shape[:3] == (2, len(VOCAB), 14)
    text = model.clip.encode_vocabulary(VOCAB)
    assert text.shape == (len(VOCAB), 14, model.clip.embed_dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(len(VOCAB), 14))


def test_one_template_as_channels_equals_the_mean(tiny_cfg):
    """With one template, "channels" computes what "mean" computes: the mean of one normalised
    embedding, renormalised, is that embedding; the cost volume is its single channel and the
    head's first conv has one input channel in both modes (same weights)."""
    torch.manual_seed(0)
    mean = build_model(tiny_cfg(*SMALL))  # the tiny config has the "single" template
    torch.manual_seed(0)
    channels = build_model(tiny_cfg(*SMALL, "MODEL.CLIP.TEMPLATE_MODE", "channels"))
    wake_zero_init_layers(mean)
    channels.load_state_dict(mean.state_dict())  # the same tensors, strictly
    costs = {}
    for key, m in (("mean", mean), ("channels", channels)):
        m.head.register_forward_pre_hook(lambda _m, args, k=key: costs.update({k: args[0]}))
    batch = make_batch()
    torch.testing.assert_close(
        head_logits(channels, batch), head_logits(mean, batch), atol=1e-6, rtol=0
    )
    assert costs["mean"].dim() == 4 and costs["channels"].dim() == 5
    torch.testing.assert_close(costs["channels"][:, :, 0], costs["mean"], atol=1e-6, rtol=0)
    # training: the aux head scores against the templates' mean, so the losses agree too
    train = make_batch(bsz=2, size=(64, 64))
    a = {k: v.item() for k, v in mean.train()(train).items()}
    b = {k: v.item() for k, v in channels.train()(train).items()}
    assert a.keys() == b.keys() == {"loss_main", "loss_aux"}
    assert all(b[k] == pytest.approx(a[k], rel=1e-5) for k in a)


def test_mean_cost_is_the_channel_sum_over_the_mean_norm():
    """For unit template embeddings e_t: cos(mean_t e_t, v) = sum_t cos(e_t, v) / |sum_t e_t|,
    so "mean" mode's cost volume is a fixed per-class rescaling of the channels' sum."""
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(5, 7, 16, generator=g), dim=-1)  # [N, T, D]
    visual = torch.randn(2, 16, 3, 4, generator=g)
    channels = cosine_cost_volume(text.unsqueeze(0).expand(2, -1, -1, -1), visual)
    assert channels.shape == (2, 5, 7, 3, 4)
    mean = cosine_cost_volume(template_mean(text), visual)
    norm = text.sum(dim=1).norm(dim=-1).view(1, 5, 1, 1)
    torch.testing.assert_close(mean, channels.sum(dim=2) / norm, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------ P2T by ratios
def official_token_count(h: int, w: int, ratios=(2, 4, 6, 8)) -> int:
    """pooling_mhsa of the official code: a round(h/r) x round(w/r) grid per ratio."""
    return sum(round(h / r) * round(w / r) for r in ratios)


@pytest.mark.parametrize("hw", [(30, 30), (30, 54), (10, 10), (36, 64), (15, 27)])
def test_p2t_ratio_token_count_follows_the_official_formula(hw):
    """At the ratio stride: 330 tokens on the 30x30 map of a 480x480 crop; (10, 10) has
    10 / 4 = 2.5, which Python's round (and the official code) sends to 2, not 3."""
    pool = P2TPooling(8, mode="ratio", ratios=(2, 4, 6, 8), stride=16, ratio_stride=16)
    assert pool.num_tokens is None  # depends on the input size
    out = pool(torch.randn(2, 8, *hw))
    assert out.shape == (2, official_token_count(*hw), 8) == (2, pool.token_count(*hw), 8)
    if hw == (30, 30):
        assert out.shape[1] == 225 + 64 + 25 + 16 == 330


def test_p2t_ratio_grids_are_the_same_at_every_scale():
    """Scales of strides 4..32 of one 480 x 864 frame all pool to the stride-16 grids, and
    with a zero depthwise conv the tokens are plain adaptive averages, layer-normalised."""
    expected = official_token_count(30, 54)
    for stride in (4, 8, 16, 32):
        pool = P2TPooling(6, mode="ratio", stride=stride, ratio_stride=16)
        h, w = 480 // stride, 864 // stride
        assert pool.grid_sizes(h, w) == [(15, 27), (8, 14), (5, 9), (4, 7)]
        assert pool.token_count(h, w) == expected
    pool = P2TPooling(6, mode="ratio", stride=16)
    for conv in pool.dw_convs:
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    x = torch.randn(1, 6, 30, 54)
    manual = torch.cat([F.adaptive_avg_pool2d(x, s).flatten(2) for s in pool.grid_sizes(30, 54)], 2)
    torch.testing.assert_close(pool(x), F.layer_norm(manual.transpose(1, 2), (6,)))
    # a map too small for a ratio still gets a 1 x 1 grid (the official code would get 0 x 0)
    assert pool.grid_sizes(3, 3) == [(2, 2), (1, 1), (1, 1), (1, 1)]


def test_ratio_pooling_needs_the_shared_aggregation_and_equal_token_counts():
    pools = nn.ModuleList(P2TPooling(8, mode="ratio", stride=s) for s in (8, 16))
    with pytest.raises(ValueError, match="AGGREGATE 'shared'"):
        SpatialTemporalContextFusion(8, pools, aggregate="tokens")
    stcf = SpatialTemporalContextFusion(8, pools, aggregate="shared")
    feats = [[torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)] for _ in range(3)]
    first = [pools[0](feats[0][0]), pools[1](feats[0][1])]
    assert first[0].shape == first[1].shape  # 8x8 at stride 8 = 4x4 at stride 16
    assert stcf(feats, first).shape == (1, 8, 8, 8)
    bad = [[torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)] for _ in range(3)]  # wrong stride
    with pytest.raises(ValueError, match="same P"):
        stcf(bad, [pools[0](bad[0][0]), pools[1](bad[0][1])])
    rfe = RandomFrameEnhancement(8, 2, num_regions=3, num_heads=2)
    with pytest.raises(ValueError, match="same P"):
        rfe.regions([pools[0](bad[0][0]), pools[1](bad[0][1])])


def test_streaming_equals_window_by_window_with_the_official_model_switches(tiny_cfg):
    """The predictor caches each frame's pooled tokens and region features: with P depending
    on the frame size (ratios), the shared aggregation, the conv region head (BatchNorm in
    eval mode) and template channels it still equals window-by-window inference."""
    cfg = tiny_cfg(
        *SMALL, "MODEL.OV2VSS.POOL_MODE", "ratio", "MODEL.OV2VSS.STCF.AGGREGATE", "shared",
        "MODEL.OV2VSS.RFE.REGION_HEAD", "conv3x3", "MODEL.OV2VSS.RFE.NUM_REGIONS", 81,
        "MODEL.CLIP.PROMPT_TEMPLATES", "vild", "MODEL.CLIP.TEMPLATE_MODE", "channels",
        "MODEL.OV2VSS.TEST_VOCABULARY", VOCAB, "INPUT.MIN_SIZE_TEST", 0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    wake_zero_init_layers(model)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (64, 140, 3), dtype=np.uint8)
    frames = [base[:, 4 * i : 4 * i + 96].copy() for i in range(11)]
    outputs = list(VideoPredictor(cfg, model=model).run(frames))
    offsets = cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS
    with torch.no_grad():
        for t, out in enumerate(outputs):
            window = window_indices(t, len(frames), offsets)
            rand = select_random_frame(t, len(frames), window, training=False)
            chw = [torch.as_tensor(frames[i].transpose(2, 0, 1).copy()) for i in window]
            x = dict(frames=torch.stack(chw), height=64, width=96)
            x["random_frame"] = torch.as_tensor(frames[rand].transpose(2, 0, 1).copy())
            ref = model([x])[0]["sem_seg"]
            torch.testing.assert_close(out["sem_seg"], ref, atol=2e-6, rtol=0, msg=f"frame {t}")


# ------------------------------------------------------------------------ accumulation
class ToyRegression(nn.Module):
    """No normalisation in the path: a large batch and its micro-batches see the same model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()

    def forward(self, batch):
        x = torch.stack([b[0] for b in batch])
        y = torch.stack([b[1] for b in batch])
        return {"loss_mse": ((self.body(x) - y) ** 2).mean()}


def toy_samples(n: int):
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(3, generator=g, dtype=torch.float64),
            torch.randn(2, generator=g, dtype=torch.float64),
        )
        for _ in range(n)
    ]


def toy_train(batches, accumulate: int = 1, max_iter=None, checkpoint_period: int = 0, model=None):
    """Train the toy model over ``batches`` (one per iteration); returns (model, steps)."""
    model = model or ToyRegression()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = []
    inner_step = opt.step
    opt.step = lambda *a, **k: (steps.append(1), inner_step(*a, **k))[1]
    max_iter = len(batches) if max_iter is None else max_iter
    if accumulate == 1:
        trainer = SimpleTrainer(model, iter(batches), opt)
    else:
        trainer = StepTrainer(model, iter(batches), opt, accumulate, max_iter, checkpoint_period)
    trainer.train(0, max_iter)
    return model, len(steps)


def run_iterations(trainer, start: int, stop: int) -> None:
    """Iterations start..stop-1 of a longer run (TrainerBase.train would end the run there)."""
    with EventStorage(start) as storage:
        trainer.storage = storage
        for i in range(start, stop):
            trainer.iter = storage.iter = i
            trainer.run_step()


def assert_same_params(a: nn.Module, b: nn.Module, atol: float = 1e-12) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=atol, rtol=0, msg=name)


def test_four_micro_batches_of_one_equal_one_batch_of_four():
    """Two groups of 4 micro-batches = two steps on batches of 4 (SGD with momentum: the
    update is proportional to the gradient, so a wrong scale would show); a last group cut
    short by MAX_ITER (iterations 8, 9) divides by its own size, as one batch of 2."""
    samples = toy_samples(10)
    large, large_steps = toy_train([samples[0:4], samples[4:8], samples[8:10]])
    micro, micro_steps = toy_train([[s] for s in samples], accumulate=4)
    assert (large_steps, micro_steps) == (3, 3)
    assert_same_params(micro, large)
    # and not what one step per micro-batch gives
    plain, _ = toy_train([[s] for s in samples])
    assert max((p - q).abs().max() for p, q in zip(plain.parameters(), large.parameters())) > 1e-3


def test_accumulated_gradients_survive_a_checkpoint_mid_group():
    """state_dict after iteration 1 of a group of 4 holds the partial gradients; a fresh
    trainer loading it continues the group and ends where the uninterrupted one ends."""
    samples = toy_samples(8)
    ref, _ = toy_train([[s] for s in samples], accumulate=4)

    model = ToyRegression()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    first = StepTrainer(model, iter([[s] for s in samples[:6]]), opt, 4, 8)
    run_iterations(first, 0, 6)  # one step, then 2 micro-batches of the second group
    state = first.state_dict()
    assert state["accumulation"]["group_start"] == 4
    assert set(state["accumulation"]["grads"]) == {n for n, _ in model.named_parameters()}

    model2 = ToyRegression()
    model2.load_state_dict(model.state_dict())
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    second = StepTrainer(model2, iter([[s] for s in samples[6:]]), opt2, 4, 8)
    second.load_state_dict(state)
    run_iterations(second, 6, 8)
    assert_same_params(model2, ref, atol=0)  # bitwise
    assert "accumulation" not in second.state_dict()  # the group is complete


def _ddp_accumulation_worker(out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="env://")  # torchrun's variables
    rank = dist.get_rank()
    try:
        samples = toy_samples(8)
        # iteration i, rank r: sample 2 i + r; group g (2 iterations) covers samples 4g..4g+3
        batches = [[samples[2 * i + rank]] for i in range(4)]
        for period in (0, 1):
            model = nn.parallel.DistributedDataParallel(ToyRegression())
            model, steps = toy_train(batches, accumulate=2, checkpoint_period=period, model=model)
            if rank == 0:
                state = {"state": model.module.state_dict(), "steps": steps}
                torch.save(state, os.path.join(out_dir, f"period{period}.pt"))
        # resumed in the middle of a group: iterations 0-2 (a step after 1, then the first
        # micro-batch of the group 2-3, synchronised as a checkpoint follows it), saved by
        # rank 0 and loaded by both processes of a new run, which adds iteration 3
        model = nn.parallel.DistributedDataParallel(ToyRegression())
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        first = StepTrainer(model, iter(batches[:3]), opt, 2, 4, checkpoint_period=3)
        run_iterations(first, 0, 3)
        path = os.path.join(out_dir, "mid_group.pt")
        if rank == 0:
            torch.save({"model": model.module.state_dict(), "trainer": first.state_dict()}, path)
        dist.barrier()
        saved = torch.load(path, weights_only=True)
        model = nn.parallel.DistributedDataParallel(ToyRegression())
        model.module.load_state_dict(saved["model"])
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        second = StepTrainer(model, iter(batches[3:]), opt, 2, 4, checkpoint_period=3)
        second.load_state_dict(saved["trainer"])
        run_iterations(second, 3, 4)
        if rank == 0:
            torch.save({"state": model.module.state_dict()}, os.path.join(out_dir, "resumed.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_accumulation_equals_one_large_batch(fork_ranks, tmp_path):
    """2 processes x 2 micro-batches of 1 = batches of 4 in one process. Earlier micro-steps
    run under no_sync; with CHECKPOINT_PERIOD 1 every micro-step synchronises (a checkpoint
    follows each), which must not change the result; nor must a resume from a checkpoint in
    the middle of a group (its partial gradients, the same in both processes). (The 2
    processes are forked from this one: no second start-up of Python.)"""
    assert fork_ranks(_ddp_accumulation_worker, str(tmp_path)) == [0, 0]
    samples = toy_samples(8)
    large, _ = toy_train([samples[0:4], samples[4:8]])
    saved = torch.load(tmp_path / "mid_group.pt", weights_only=True)
    assert saved["trainer"]["accumulation"]["group_start"] == 2  # a partial group was saved
    for run in ("period0", "period1", "resumed"):
        got = torch.load(tmp_path / f"{run}.pt", weights_only=True)
        assert got.get("steps", 2) == 2  # optimizer steps of the uninterrupted runs
        for name, p in large.state_dict().items():
            torch.testing.assert_close(
                got["state"][name], p, atol=1e-12, rtol=0, msg=f"{run}: {name}"
            )


def test_accumulation_steps_setting(tiny_cfg):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plain = build_step_trainer(tiny_cfg(), model, [], opt)  # one step per iteration, fp32
    assert (plain.accumulate_steps, plain.autocast, plain.grad_scaler) == (1, None, None)
    trainer = build_step_trainer(tiny_cfg("SOLVER.ACCUMULATE_STEPS", 3), model, [], opt)
    assert isinstance(trainer, StepTrainer) and trainer.accumulate_steps == 3
    assert trainer.group(4) == (3, 5) and trainer.group(399) == (399, 399)  # MAX_ITER 400
    with pytest.raises(Exception, match="ACCUMULATE_STEPS=0"):
        build_step_trainer(tiny_cfg("SOLVER.ACCUMULATE_STEPS", 0), model, [], opt)


# ------------------------------------------------------------------------ weight decay
def test_weight_decay_norm_and_bias_groups(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*SMALL, "MODEL.OV2VSS.RFE.REGION_HEAD", "conv3x3"))
    norm_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    norms = {
        id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(False)
    }
    biases = {
        id(p)
        for m in model.modules()
        if not isinstance(m, norm_types)
        for n, p in m.named_parameters(recurse=False)
        if n == "bias" or p.ndim <= 1
    }
    assert norms and biases

    def decay(*opts):
        cfg = tiny_cfg(*SMALL, "SOLVER.WEIGHT_DECAY", 0.01, *opts)
        groups = build_param_groups(cfg, model)
        out = {"norm": set(), "bias": set(), "other": set()}
        for g in groups:
            (p,) = g["params"]
            kind = "norm" if id(p) in norms else "bias" if id(p) in biases else "other"
            out[kind].add(g["weight_decay"])
        return out

    assert decay() == {"norm": {0.0}, "bias": {0.0}, "other": {0.01}}  # the default
    assert decay("SOLVER.WEIGHT_DECAY_NORM", 0.0, "SOLVER.WEIGHT_DECAY_BIAS", 0.01) == {
        "norm": {0.0},
        "bias": {0.01},
        "other": {0.01},
    }  # the official preset
    # WEIGHT_DECAY_NORM is honoured (not just 0 by accident)
    assert decay("SOLVER.WEIGHT_DECAY_NORM", 0.003)["norm"] == {0.003}


# ------------------------------------------------------------------------ data switches
FH, FW = 16, 24


def write_video(root, num_frames: int, frame_fn) -> List[str]:
    origin = os.path.join(str(root), "data", "vid", "origin")
    masks = os.path.join(str(root), "data", "vid", "mask")
    os.makedirs(origin, exist_ok=True)
    os.makedirs(masks, exist_ok=True)
    paths = []
    for i in range(num_frames):
        paths.append(os.path.join(origin, f"{i:05d}.png"))
        Image.fromarray(frame_fn(i)).save(paths[-1])
        Image.fromarray(np.zeros((FH, FW), np.uint8)).save(os.path.join(masks, f"{i:05d}.png"))
    return paths


def mapper_for(tmp_path, frames: List[str], t: int, **overrides):
    record = {
        "file_name": frames[t],
        "sem_seg_file_name": frames[t].replace("origin", "mask"),
        "video_id": "vid",
        "frame_index": t,
        "video_frames": frames,
        "height": FH,
        "width": FW,
    }
    name = f"official_switches_{tmp_path.name}"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [record])
        MetadataCatalog.get(name).set(stuff_classes=["a", "b"], ignore_label=255)
    # frames keep their size (no resize, no crop), so that pixel values name the frame
    opts = ["DATASETS.TRAIN", (name,), "INPUT.FORMAT", "RGB", "INPUT.MIN_SIZE_TRAIN", (FH,),
            "INPUT.MAX_SIZE_TRAIN", 1000, "INPUT.CROP.ENABLED", False]  # fmt: skip
    cfg = get_ov2vss_cfg(opts=opts + [item for pair in overrides.items() for item in pair])
    return VideoSemSegDatasetMapper(cfg, is_train=True), record


def frame_ids(out) -> List[int]:
    return [int(v) // 10 for v in out["frames"][:, 0, 0, 0]]


def id_frame(i: int) -> np.ndarray:
    img = np.full((FH, FW, 3), 100, np.uint8)
    img[..., 0] = 10 * i
    return img


@pytest.mark.parametrize(
    "t, expected",
    [(10, [19, 16, 13, 10]), (2, [11, 8, 5, 2]), (18, [19, 19, 19, 18])],  # clamped at the end
)
def test_reversed_window_is_the_video_played_backwards(tmp_path, t, expected):
    """REVERSE_PROB 1: references t+9, t+6, t+3, then the target (as the official code's
    reversed frame list gives them); the random frame stays outside the window."""
    frames = write_video(tmp_path, 20, id_frame)
    mapper, record = mapper_for(tmp_path, frames, t, **{"INPUT.TEMPORAL.REVERSE_PROB": 1.0})
    for seed in range(3):
        np.random.seed(seed)
        out = mapper(record)
        assert frame_ids(out) == expected
        rand = int(out["random_frame"][0, 0, 0]) // 10
        assert rand not in expected and 0 <= rand < 20
    forward, _ = mapper_for(tmp_path, frames, t)
    assert frame_ids(forward(record)) == [max(t - k, 0) for k in (9, 6, 3)] + [t]


def test_reversal_draws_only_when_on(tmp_path):
    """REVERSE_PROB 0 makes exactly today's random calls (the window, then the random frame
    draw); any p > 0 draws once more per window; with p = 0.5 both orders occur."""
    frames = write_video(tmp_path, 20, id_frame)
    off, _ = mapper_for(tmp_path, frames, 10)
    half, record = mapper_for(tmp_path, frames, 10, **{"INPUT.TEMPORAL.REVERSE_PROB": 0.5})

    def state_after(fn):
        np.random.seed(7)
        result = fn()
        return result, np.random.get_state()[1].copy(), np.random.get_state()[2]

    today = state_after(
        lambda: select_random_frame(10, 20, window_indices(10, 20, [9, 6, 3]), training=True)
    )
    window_off = state_after(lambda: off._choose_window(10, 20))
    assert window_off[0][1] == today[0]
    assert np.array_equal(window_off[1], today[1]) and window_off[2] == today[2]
    window_half = state_after(lambda: half._choose_window(10, 20))
    assert not (np.array_equal(window_half[1], today[1]) and window_half[2] == today[2])
    np.random.seed(0)
    orders = {tuple(frame_ids(half(record))) for _ in range(20)}
    assert orders == {(1, 4, 7, 10), (19, 16, 13, 10)}


def test_per_frame_photometric_draws(tmp_path):
    """COLOR_AUG_PER_FRAME: a static video (every frame the same) comes out with frames that
    differ from each other; one draw per window keeps them identical. The default list of
    augmentations is unchanged."""
    rng = np.random.RandomState(0)
    still = rng.randint(60, 190, size=(FH, FW, 3)).astype(np.uint8)
    frames = write_video(tmp_path, 12, lambda i: still)
    window, record = mapper_for(tmp_path, frames, 11, **{"INPUT.COLOR_AUG_SSD": True})
    per_frame, _ = mapper_for(
        tmp_path, frames, 11, **{"INPUT.COLOR_AUG_SSD": True, "INPUT.COLOR_AUG_PER_FRAME": True}
    )
    assert any(isinstance(a, WindowColorAugmentation) for a in window.augmentations.augs)
    assert window.frame_color_augmentation is None
    assert not any(isinstance(a, WindowColorAugmentation) for a in per_frame.augmentations.augs)
    assert isinstance(per_frame.frame_color_augmentation, WindowColorAugmentation)
    np.random.seed(0)
    differ = 0
    for _ in range(4):
        out = window(record)
        stack = torch.cat([out["frames"], out["random_frame"][None]]).long()
        assert all(torch.equal(f, stack[0]) for f in stack)  # one draw for the whole window
        out = per_frame(record)
        stack = torch.cat([out["frames"], out["random_frame"][None]]).long()
        differ += sum(int((f - stack[-2]).abs().max() > 2) for f in stack)
    assert differ > 0
    cfg = get_ov2vss_cfg(opts=["INPUT.COLOR_AUG_SSD", "True"])
    assert build_frame_color_augmentation(cfg, True) is None
    assert isinstance(build_augmentation(cfg, True)[-1], WindowColorAugmentation)


# ------------------------------------------------------------------------ the preset
def test_official_preset_values(repo_root):
    cfg = get_ov2vss_cfg(os.path.join(repo_root, PRESET))
    assert cfg.MODEL.BACKBONE.NAME == "build_sam_vit_backbone"
    assert cfg.MODEL.WEIGHTS == "checkpoints/sam_vit_b_01ec64.pth"
    c, m, s = cfg.MODEL.CLIP, cfg.MODEL.OV2VSS, cfg.SOLVER
    assert (c.DENSE_MODE, c.PROMPT_TEMPLATES, c.TEMPLATE_MODE) == ("vv", "imagenet", "channels")
    assert (m.POOL_MODE, list(m.POOL_RATIOS), m.STCF.AGGREGATE) == ("ratio", [2, 4, 6, 8], "shared")
    assert (m.RFE.NUM_REGIONS, m.RFE.REGION_HEAD) == (81, "conv3x3")
    assert (s.IMS_PER_BATCH, s.ACCUMULATE_STEPS, s.MAX_ITER, s.WARMUP_ITERS) == (1, 4, 100000, 1500)
    assert (s.WEIGHT_DECAY_NORM, s.WEIGHT_DECAY_BIAS, s.HEAD_MULTIPLIER) == (0.0, 0.01, 10.0)
    assert not s.CLIP_GRADIENTS.ENABLED
    assert cfg.INPUT.COLOR_AUG_SSD and cfg.INPUT.COLOR_AUG_PER_FRAME
    assert cfg.INPUT.TEMPORAL.REVERSE_PROB == 0.5
    # the paper's defaults elsewhere
    base = get_ov2vss_cfg(os.path.join(repo_root, "configs/vspw/ov2vss_sam_vitb.yaml"))
    assert (base.MODEL.CLIP.TEMPLATE_MODE, base.MODEL.OV2VSS.POOL_MODE) == ("mean", "grid")
    assert (base.SOLVER.ACCUMULATE_STEPS, base.INPUT.TEMPORAL.REVERSE_PROB) == (1, 0.0)


def test_official_preset_trains_two_iterations_on_cpu(
    repo_root, toy_root, tiny_train_opts, tmp_path
):
    """The preset at toy size (SAM and CLIP shrunk, random weights, toy windows of 48x64):
    80 templates as channels, ratio pooling, 81 conv regions, per-frame photometric draws,
    reversed windows, batch 1 with 4-step accumulation cut short by MAX_ITER 2: one step."""
    opts = tiny_train_opts(
        toy_root, tmp_path,
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.CLIP.PRETRAINED", "",
        "MODEL.CLIP.ARCH", "OV2VSS-Tiny-CLIP", "MODEL.OV2VSS.HIDDEN_DIM", "32",
        "MODEL.SAM_VIT.EMBED_DIM", "96", "MODEL.SAM_VIT.NUM_HEADS", "3",
        "MODEL.SAM_VIT.PRETRAIN_IMG_SIZE", "128", "MODEL.SAM_VIT.OUT_CHANNELS", "16",
        "DATASETS.TRAIN", "('vspw_toy_train_seen',)", "DATASETS.TEST", "()",
        "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "SEED", "0",
    )  # fmt: skip
    args = default_argument_parser().parse_args(
        ["--config-file", os.path.join(repo_root, PRESET)] + opts
    )
    trainer = Trainer(setup(args))
    assert isinstance(trainer._trainer, StepTrainer) and trainer._trainer.accumulate_steps == 4
    model = trainer.model
    assert model.head.cost_conv[0].in_channels == 80 and model.pools[0].mode == "ratio"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = []
    inner = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (steps.append(trainer.iter), inner(*a, **k))[1]
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 2 and steps == [1]  # one optimizer step, after iteration 1
    loss = trainer.storage.history("total_loss").latest()
    assert 0 < loss < 100
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("head.") for k in moved) and any(
        k.startswith("backbone.") for k in moved
    )
