"""CLIP adapter: the "vv" dense features (the official code's value path of the last image
block) and the exact short-context text encoding."""

from typing import List

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ov2vss.modeling.clip.adapter as clip_adapter
from ov2vss.modeling.clip import CLIPAdapter, build_clip_adapter, build_open_clip, encode_text

TINY_CLIP = "OV2VSS-Tiny-CLIP"  # shipped open_clip config: width 64, 2+2 blocks, patch 8, 96 px


def tiny_adapter(dense_mode: str = "qk", input_size: int = 96, model=None) -> CLIPAdapter:
    model = model if model is not None else build_open_clip(TINY_CLIP, "")
    return CLIPAdapter(
        model, TINY_CLIP, ["a photo of a {}."], input_size=input_size, dense_mode=dense_mode
    ).eval()


def self_only_mask(num_tokens: int) -> torch.Tensor:
    """An additive attention mask that lets each token attend only to itself: the attention
    weights are the identity, so an attention block returns out_proj(v) (the value path)."""
    return torch.full((num_tokens, num_tokens), float("-inf")).fill_diagonal_(0.0)


def direct_dense(adapter: CLIPAdapter, images: torch.Tensor, last_block: str) -> torch.Tensor:
    """F^V at the tower's native 96 px from open_clip's own forward (its patch tokens, after
    ln_post, times proj). "vv": open_clip's last block runs with :func:`self_only_mask`, which
    is the official code's forward_dense, y = x + out_proj(v), then y + mlp(ln_2(y))."""
    visual = adapter.model.visual
    last = visual.transformer.resblocks[-1]
    mask = self_only_mask(visual.positional_embedding.shape[0])
    handle = last.register_forward_pre_hook(
        lambda _m, args, kwargs: (args, {**kwargs, "attn_mask": mask}), with_kwargs=True
    )
    if last_block == "qk":
        handle.remove()
    visual.output_tokens = True
    try:
        _, tokens = visual((images - adapter.pixel_mean) / adapter.pixel_std)
    finally:
        visual.output_tokens = False
        handle.remove()
    x = tokens @ visual.proj
    return x.transpose(1, 2).reshape(x.shape[0], -1, 12, 12)


# ---------------------------------------------------------------------------- dense features
def test_vv_dense_features_equal_open_clip_attending_to_itself():
    torch.manual_seed(0)
    adapter = tiny_adapter("vv")
    images = torch.rand(2, 3, 96, 96) * 255
    with torch.no_grad():
        torch.testing.assert_close(
            adapter.dense_features(images),
            direct_dense(adapter, images, "vv"),
            atol=1e-5,
            rtol=1e-5,
        )


def test_qk_dense_features_unchanged_and_vv_differs():
    model = build_open_clip(TINY_CLIP, "")
    default, qk, vv = (
        tiny_adapter(model=model),
        tiny_adapter("qk", model=model),
        tiny_adapter("vv", model=model),
    )
    assert default.dense_mode == "qk"
    images = torch.rand(2, 3, 96, 96) * 255
    with torch.no_grad():
        expected = direct_dense(qk, images, "qk")
        torch.testing.assert_close(default.dense_features(images), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(qk.dense_features(images), expected, atol=1e-5, rtol=1e-5)
        assert (vv.dense_features(images) - expected).abs().max() > 1e-2
        # other frame sizes: same shapes, still different features
        frames = torch.rand(1, 3, 40, 70) * 255
        a, b = qk.dense_features(frames), vv.dense_features(frames)
    assert a.shape == b.shape == (1, 64, 12, 21)
    assert (a - b).abs().max() > 1e-2


def test_vv_dense_features_train_the_last_block():
    adapter = CLIPAdapter(
        build_open_clip(TINY_CLIP, ""), TINY_CLIP, ["{}"], "image", 32, dense_mode="vv"
    )
    adapter.dense_features(torch.rand(1, 3, 32, 32) * 255).square().mean().backward()
    last = adapter.model.visual.transformer.resblocks[-1]
    d = last.attn.out_proj.weight.shape[0]
    assert last.attn.in_proj_weight.grad[2 * d :].abs().sum() > 0  # the value projection trains
    assert last.attn.in_proj_weight.grad[: 2 * d].abs().sum() == 0  # q, k are unused
    assert last.mlp.c_fc.weight.grad.abs().sum() > 0


def test_bad_dense_mode_names_the_config_key():
    with pytest.raises(ValueError, match="MODEL.CLIP.DENSE_MODE"):
        tiny_adapter("kv")


def test_dense_mode_is_read_from_the_config(tiny_cfg):
    assert build_clip_adapter(tiny_cfg()).dense_mode == "qk"
    assert build_clip_adapter(tiny_cfg("MODEL.CLIP.DENSE_MODE", "vv")).dense_mode == "vv"
    with pytest.raises(ValueError, match="MODEL.CLIP.DENSE_MODE"):
        build_clip_adapter(tiny_cfg("MODEL.CLIP.DENSE_MODE", "qq"))


# ---------------------------------------------------------------------------- text
class SeqLengths:
    """Records the sequence length every pass of the text transformer sees."""

    def __init__(self, transformer: nn.Module):
        self.lengths: List[int] = []
        self.handle = transformer.register_forward_pre_hook(
            lambda m, args: self.lengths.append(args[0].shape[1])
        )


@pytest.fixture(scope="module")
def vit_b16() -> nn.Module:
    """open_clip's ViT-B-16 with random weights (only its text tower runs)."""
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16", pretrained=None).eval()


PROMPTS = [
    "a photo of a cat.",
    "There is a large traffic light in the scene.",
    "a photo of a " + " ".join(["very"] * 20) + " long name.",
]
TOO_LONG = "a photo of a " + " ".join(["word"] * 100) + "."  # truncated to 77 tokens, EOT last


def test_short_context_text_equals_full_context(vit_b16):
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    tokens = tokenizer(PROMPTS)
    eot = tokens.argmax(dim=-1)
    assert int(eot.max()) < 40
    seen = SeqLengths(vit_b16.transformer)
    with torch.no_grad():
        short = encode_text(vit_b16, tokens)
        full = vit_b16.encode_text(tokens)
    seen.handle.remove()
    assert seen.lengths == [int(eot.max()) + 1, 77]  # the fast path ran, then the reference
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
    assert (F.normalize(short, dim=-1) - F.normalize(full, dim=-1)).abs().max() <= 1e-6


def test_prompt_at_the_context_limit_uses_the_full_context(vit_b16):
    tokens = open_clip.get_tokenizer("ViT-B-16")(PROMPTS + [TOO_LONG])
    assert tokens[-1].argmax() == 76  # the tokenizer cut it and put EOT at the last position
    seen = SeqLengths(vit_b16.transformer)
    with torch.no_grad():
        short = encode_text(vit_b16, tokens)
        full = vit_b16.encode_text(tokens)
    seen.handle.remove()
    assert seen.lengths == [77, 77]
    assert (F.normalize(short, dim=-1) - F.normalize(full, dim=-1)).abs().max() <= 1e-6


def test_encode_vocabulary_takes_the_short_path(vit_b16, monkeypatch):
    templates = ["a photo of a {}.", "There is a {} in the scene"]
    adapter = CLIPAdapter(vit_b16, "ViT-B-16", templates).eval()
    monkeypatch.setattr(clip_adapter, "_TEXT_CHUNK", 3)  # 4 prompts -> chunks of 3 + 1
    names = ["cat", "traffic light " + " ".join(["very"] * 10)]
    seen = SeqLengths(vit_b16.transformer)
    emb = adapter.encode_vocabulary(names)
    seen.handle.remove()
    assert len(seen.lengths) == 2 and max(seen.lengths) < 30  # each chunk cut to its own EOT
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    with torch.no_grad():
        full = vit_b16.encode_text(tokenizer([t.format(c) for c in names for t in templates]))
    ref = F.normalize(F.normalize(full, dim=-1).view(2, 2, -1).mean(1), dim=-1)
    assert (emb - ref).abs().max() <= 1e-6
    # a vocabulary with a prompt at the context limit runs that chunk over the full context
    seen = SeqLengths(vit_b16.transformer)
    adapter.encode_vocabulary([TOO_LONG])
    seen.handle.remove()
    assert seen.lengths == [77]


def _tiny_custom_text_clip(**text_cfg) -> nn.Module:
    cfg = dict(context_length=24, vocab_size=49408, width=64, heads=2, layers=2, **text_cfg)
    vision = dict(image_size=32, layers=1, width=32, head_width=32, patch_size=16)
    return open_clip.model.CustomTextCLIP(embed_dim=32, vision_cfg=vision, text_cfg=cfg).eval()


def test_custom_text_clip_short_context():
    torch.manual_seed(0)
    model = _tiny_custom_text_clip()
    tokens = open_clip.tokenize(["a photo of a cat.", "a red circle"], context_length=24)
    seen = SeqLengths(model.text.transformer)
    with torch.no_grad():
        short, full = encode_text(model, tokens), model.encode_text(tokens)
    seen.handle.remove()
    assert seen.lengths == [int(tokens.argmax(-1).max()) + 1, 24]
    assert (short - full).abs().max() <= 1e-5


@pytest.mark.parametrize("text_cfg", [dict(no_causal_mask=True), dict(pool_type="last")])
def test_towers_where_truncation_is_not_exact_keep_the_full_context(text_cfg):
    torch.manual_seed(0)
    model = _tiny_custom_text_clip(**text_cfg)
    tokens = open_clip.tokenize(["a photo of a cat."], context_length=24)
    seen = SeqLengths(model.text.transformer)
    with torch.no_grad():
        torch.testing.assert_close(
            encode_text(model, tokens), model.encode_text(tokens), atol=0, rtol=0
        )
    seen.handle.remove()
    assert seen.lengths == [24, 24]


def test_tiny_clip_text_short_context():
    """The tiny CLIP of the CPU configs (context 24) takes the short path too."""
    adapter = tiny_adapter()
    tokens = open_clip.get_tokenizer(TINY_CLIP)(["a photo of a red circle."])
    seen = SeqLengths(adapter.model.transformer)
    with torch.no_grad():
        short, full = encode_text(adapter.model, tokens), adapter.model.encode_text(tokens)
    seen.handle.remove()
    assert seen.lengths[0] < 24 and seen.lengths[1] == 24
    assert (short - full).abs().max() <= 1e-5
