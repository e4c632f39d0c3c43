"""The OV2VSS meta-architecture end to end at toy size (tiny config, random weights, CPU).

Every row of the paper's Table III ablation is a config change; each one must still train
(forward + backward with a gradient on every trainable parameter). The vocabulary at test
time may differ in size from the training one.
"""

from typing import Dict, List

import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

import ov2vss  # noqa: F401  (registers the model and the toy dataset names)

NUM_TRAIN_CLASSES = 28  # seen classes of vspw_toy_train_seen
NAMES = ["red circle", "blue star", "green square", "yellow ring", "purple cross", "cyan triangle"]
# smaller than the demo: dense CLIP features on a 4x4 grid of 8 px patches
SMALL = ("MODEL.CLIP.INPUT_SIZE", 32, "MODEL.OV2VSS.HIDDEN_DIM", 32)


@pytest.fixture(scope="module")
def build(tiny_cfg):
    """``build(*opts)``: the tiny model with the same weights for the same architecture."""

    def make(*opts) -> nn.Module:
        torch.manual_seed(0)
        return build_model(tiny_cfg(*SMALL, *opts))

    return make


def make_batch(
    bsz: int = 2,
    size=(64, 64),
    num_frames: int = 4,
    num_classes: int = NUM_TRAIN_CLASSES,
    seed: int = 1,
) -> List[Dict]:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    batch = []
    for _ in range(bsz):
        sem_seg = torch.randint(0, num_classes, (h, w), generator=g)
        sem_seg[: h // 4] = 255  # some ignored pixels
        batch.append(
            {
                "frames": torch.randint(
                    0, 256, (num_frames, 3, h, w), generator=g, dtype=torch.uint8
                ),
                "random_frame": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                "sem_seg": sem_seg,
                "height": h,
                "width": w,
            }
        )
    return batch


def wake_zero_init_layers(model: nn.Module) -> None:
    """VTE's residual branches start at zero, which (correctly) blocks the gradient of the layers
    before them at step 0; give them small weights so that every parameter can be checked."""
    if model.vte is not None:
        nn.init.normal_(model.vte.attn.out_proj.weight, std=0.02)
        if model.vte.ffn is not None:
            nn.init.normal_(model.vte.ffn[-1].weight, std=0.02)


def assert_every_param_has_grad(module: nn.Module) -> None:
    dead = [
        n
        for n, p in module.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))
    ]
    assert not dead, f"no gradient reaches {dead}"


def train_step(model: nn.Module, batch: List[Dict]) -> Dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    return losses


@pytest.fixture(scope="module")
def eval_model(build) -> nn.Module:
    return build().eval()


# ---------------------------------------------------------------------------------- training
def test_forward_backward_reaches_every_parameter(build):
    model = build()
    assert len(model.train_class_texts) == NUM_TRAIN_CLASSES
    wake_zero_init_layers(model)
    losses = train_step(model, make_batch())
    assert set(losses) == {"loss_main", "loss_aux"}
    # random weights: about ln(28) = 3.3 nats per pixel
    assert 1.0 < losses["loss_main"].item() < 10.0
    assert_every_param_has_grad(model)


# Table III: key components, fusing strategy, VTE structure (the loss ratio is tested below)
ABLATIONS = {
    "baseline": [
        "MODEL.OV2VSS.STCF.ENABLED",
        False,
        "MODEL.OV2VSS.RFE.ENABLED",
        False,
        "MODEL.OV2VSS.VTE.ENABLED",
        False,
    ],
    "no_stcf": ["MODEL.OV2VSS.STCF.ENABLED", False],
    "no_rfe": ["MODEL.OV2VSS.RFE.ENABLED", False],
    "no_vte": ["MODEL.OV2VSS.VTE.ENABLED", False],
    "vte_attention_only": ["MODEL.OV2VSS.VTE.USE_FFN", False],
    "fusion_add": ["MODEL.OV2VSS.STCF.FUSION", "add"],
    # the official code's choices (docs/OFFICIAL_CODE.md)
    "templates_as_channels": [
        "MODEL.CLIP.TEMPLATE_MODE",
        "channels",
        "MODEL.CLIP.PROMPT_TEMPLATES",
        "vild",
    ],
    "pool_by_ratios": ["MODEL.OV2VSS.POOL_MODE", "ratio", "MODEL.OV2VSS.STCF.AGGREGATE", "shared"],
    "stcf_shared_aggregation": ["MODEL.OV2VSS.STCF.AGGREGATE", "shared"],
    "rfe_conv3x3_81_regions": [
        "MODEL.OV2VSS.RFE.REGION_HEAD",
        "conv3x3",
        "MODEL.OV2VSS.RFE.NUM_REGIONS",
        81,
    ],
}


# Every parameter must get a gradient in every row (DDP refuses unused parameters): with STCF
# and RFE both off, the target's deeper scales still feed O_t.
@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_ablation_row_trains(name, build):
    opts = ABLATIONS[name]
    model = build(*opts)
    flags = dict(zip(opts[::2], opts[1::2]))
    assert (model.stcf is None) == (flags.get("MODEL.OV2VSS.STCF.ENABLED") is False)
    assert (model.rfe is None) == (flags.get("MODEL.OV2VSS.RFE.ENABLED") is False)
    assert (model.vte is None) == (flags.get("MODEL.OV2VSS.VTE.ENABLED") is False)
    if model.vte is not None:
        assert (model.vte.ffn is None) == (flags.get("MODEL.OV2VSS.VTE.USE_FFN") is False)
    if model.stcf is not None:
        assert model.stcf.fusion == flags.get("MODEL.OV2VSS.STCF.FUSION", "concat")
    wake_zero_init_layers(model)
    train_step(model, make_batch())
    assert_every_param_has_grad(model)


def test_loss_is_alpha_main_plus_beta_aux(build):
    """Eq. 15 with alpha, beta from the config: the loss terms scale exactly."""
    batch = make_batch()
    ref = build()
    base = {k: v.item() for k, v in train_step(ref, batch).items()}
    state = ref.state_dict()

    scaled = build("MODEL.OV2VSS.MAIN_LOSS_WEIGHT", 2.5, "MODEL.OV2VSS.AUX_LOSS_WEIGHT", 0.4)
    scaled.load_state_dict(state)
    losses = train_step(scaled, batch)
    assert losses["loss_main"].item() == pytest.approx(2.5 * base["loss_main"], rel=1e-6)
    assert losses["loss_aux"].item() == pytest.approx(0.4 * base["loss_aux"], rel=1e-6)

    no_aux = build("MODEL.OV2VSS.AUX_LOSS_WEIGHT", 0.0)
    no_aux.load_state_dict({k: v for k, v in state.items() if not k.startswith("aux_head.")})
    losses = train_step(no_aux, batch)
    assert set(losses) == {"loss_main"}
    assert losses["loss_main"].item() == pytest.approx(base["loss_main"], rel=1e-6)


def test_labels_outside_the_training_vocabulary_are_an_error(build):
    model = build().train()
    batch = make_batch()
    batch[1]["sem_seg"][-1, -1] = NUM_TRAIN_CLASSES  # one class too many
    with pytest.raises(ValueError, match=f"outside the training vocabulary of {NUM_TRAIN_CLASSES}"):
        model(batch)


def test_fully_ignored_batch_gives_zero_loss_and_keeps_the_graph(build):
    model = build()
    batch = make_batch()
    for x in batch:
        x["sem_seg"].fill_(255)
    losses = train_step(model, batch)
    assert all(v.item() == 0.0 for v in losses.values())


# ---------------------------------------------------------------------------------- inference
@pytest.mark.parametrize("vocab_size", [1, 3, 6])
def test_test_vocabulary_of_any_size(eval_model, vocab_size):
    vocab = NAMES[:vocab_size]
    batch = make_batch(size=(64, 96))
    batch[1]["height"], batch[1]["width"] = 128, 192  # the frames were downscaled by the mapper
    before = list(eval_model.test_class_texts)
    assert before != vocab
    with torch.no_grad(), eval_model.vocabulary(vocab):
        assert eval_model.test_class_texts == vocab
        out = eval_model(batch)
    assert out[0]["sem_seg"].shape == (vocab_size, 64, 96)
    assert out[1]["sem_seg"].shape == (vocab_size, 128, 192)
    for o in out:
        torch.testing.assert_close(o["sem_seg"].sum(0), torch.ones(o["sem_seg"].shape[1:]))
    assert eval_model.test_class_texts == before  # the context manager restored it
    assert len(eval_model.train_class_texts) == NUM_TRAIN_CLASSES


def test_class_scores_do_not_depend_on_the_rest_of_the_vocabulary(eval_model):
    """log(p_a / p_b) = logit_a - logit_b: the same with 2 or 6 names (class-agnostic head)."""
    batch = make_batch(bsz=1, size=(64, 96))
    with torch.no_grad():
        with eval_model.vocabulary(NAMES[:2]):
            small = eval_model(batch)[0]["sem_seg"].log()
        with eval_model.vocabulary(list(reversed(NAMES))):
            large = eval_model(batch)[0]["sem_seg"].log()
    torch.testing.assert_close(small[0] - small[1], large[5] - large[4], atol=1e-4, rtol=1e-4)


def test_vocabulary_from_config_and_bad_vocabularies(eval_model, tiny_cfg):
    assert len(eval_model.test_class_texts) == 8  # DATASETS.TEST[0] = vspw_toy_val_unseen
    cfg = tiny_cfg(*SMALL, "MODEL.OV2VSS.TEST_VOCABULARY", ["cat", "dog", "sky"])
    from ov2vss import OV2VSS

    assert OV2VSS.from_config(cfg)["test_class_texts"] == ["cat", "dog", "sky"]
    with pytest.raises(ValueError, match="non-empty"):
        eval_model.set_test_vocabulary([])
    with pytest.raises(ValueError, match="duplicate class names.*'dog'"):
        eval_model.set_test_vocabulary(["dog", "cat", "dog"])


def test_windows_of_different_sizes_and_frame_counts(eval_model):
    batch = make_batch(bsz=1, size=(64, 64)) + make_batch(bsz=1, size=(40, 72))
    with torch.no_grad():
        out = eval_model(batch)
    assert out[0]["sem_seg"].shape[1:] == (64, 64) and out[1]["sem_seg"].shape[1:] == (40, 72)
    bad = make_batch(bsz=1) + make_batch(bsz=1, num_frames=3)
    with pytest.raises(ValueError, match="same number of frames"):
        eval_model(bad)


def test_config_switches_decide_which_frames_are_used(build):
    """STCF reads the reference frames, RFE the random frame; switched off, they are ignored.
    (VTE.CLIP_FRAMES "target" so that VTE does not read the references either.)"""
    batch = make_batch(bsz=1)
    new_refs = [
        dict(
            batch[0],
            frames=torch.cat([make_batch(bsz=1, seed=7)[0]["frames"][:3], batch[0]["frames"][3:]]),
        )
    ]
    new_random = [dict(batch[0], random_frame=make_batch(bsz=1, seed=8)[0]["random_frame"])]

    def logits(*opts) -> List[torch.Tensor]:
        """The head's per-class logits (at random init the probabilities are nearly uniform)."""
        model = build("MODEL.OV2VSS.VTE.CLIP_FRAMES", "target", *opts).eval()
        seen = []
        model.head.register_forward_hook(lambda _m, _in, out: seen.append(out))
        with torch.no_grad():
            for b in (batch, new_refs, new_random):
                model(b)
        return seen

    base, refs, rand = logits()
    # logits are ~0.05 at init; float noise would be ~1e-8
    assert (refs - base).abs().max() > 1e-4 and (rand - base).abs().max() > 1e-4
    base, refs, rand = logits("MODEL.OV2VSS.STCF.ENABLED", False, "MODEL.OV2VSS.RFE.ENABLED", False)
    assert torch.equal(refs, base) and torch.equal(rand, base)


def test_bgr_input_reaches_clip_as_rgb(build):
    """detectron2 convention: INPUT.FORMAT is the frames' channel order, PIXEL_MEAN/STD follow
    it. CLIP must still receive the same RGB pixels."""
    rgb_model = build().eval()
    mean, std = list(rgb_model.pixel_mean.flatten().tolist()), list(
        rgb_model.pixel_std.flatten().tolist()
    )
    bgr_model = build(
        "INPUT.FORMAT", "BGR", "MODEL.PIXEL_MEAN", mean[::-1], "MODEL.PIXEL_STD", std[::-1]
    ).eval()
    bgr_model.load_state_dict(rgb_model.state_dict())
    batch = make_batch(bsz=1, size=(64, 64))
    bgr_batch = [
        dict(
            batch[0],
            frames=batch[0]["frames"].flip(1),
            random_frame=batch[0]["random_frame"].flip(0),
        )
    ]

    seen = {}
    for name, model in (("rgb", rgb_model), ("bgr", bgr_model)):
        inner = model.clip.dense_features

        def record(images, _name=name, _inner=inner):
            seen[_name] = images.clone()
            return _inner(images)

        model.clip.dense_features = record
    with torch.no_grad():
        rgb_model(batch)
        bgr_model(bgr_batch)
    torch.testing.assert_close(seen["bgr"], seen["rgb"])
    # and those are the frames' own 0..255 RGB values
    torch.testing.assert_close(seen["rgb"], batch[0]["frames"].float(), atol=1e-3, rtol=0)


def test_clip_vit_backbone_model_trains(build):
    """The ViT config's path: backbone = a CLIP visual tower (tiny here), CLIP pixel statistics."""
    mean = [0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255]
    std = [0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255]
    model = build(
        "MODEL.BACKBONE.NAME", "build_clip_vit_backbone",
        "MODEL.CLIP_VIT.OUT_LAYERS", [1, 1, 2, 2],  # the tiny tower has 2 blocks
        "MODEL.CLIP_VIT.OUT_CHANNELS", 16,
        "MODEL.PIXEL_MEAN", mean, "MODEL.PIXEL_STD", std,
    )  # fmt: skip
    assert type(model.backbone).__name__ == "CLIPViTBackbone"
    wake_zero_init_layers(model)
    train_step(model, make_batch())
    assert_every_param_has_grad(model)
