"""SAM ViT backbone (the paper's ViT-B): same numbers as SAM's own encoder, strict loading of
SAM's checkpoint file, pyramid shapes."""

from functools import partial

import pytest
import torch
from segment_anything import sam_model_registry  # SAM's own code, the reference
from segment_anything.modeling.image_encoder import ImageEncoderViT
from torch import nn

from ov2vss.modeling.backbone.sam_checkpoint import (
    SAMCheckpointError,
    convert_sam_checkpoint,
    is_sam_checkpoint,
    sam_encoder_shapes,
)
from ov2vss.modeling.backbone.sam_vit import (
    SAMImageEncoder,
    SAMViTBackbone,
    build_sam_vit_backbone,
)

OUT_BLOCKS = (3, 6, 9, 12)
# SAM ViT-B's layout (12 blocks, window 14, global blocks 2/5/8/11) at a narrow width and a
# 128 px pre-training size, so that SAM's encoder runs on 128 px inputs on the CPU
SMALL = dict(img_size=128, patch_size=16, embed_dim=96, depth=12, num_heads=3, window_size=14)
GLOBAL = (2, 5, 8, 11)


def small_sam_encoder() -> ImageEncoderViT:
    """SAM's own encoder, built as segment_anything.build_sam does (eps 1e-6, rel-pos, qkv bias),
    with random weights (rel-pos tables included, SAM initialises them to zero)."""
    enc = ImageEncoderViT(
        depth=SMALL["depth"],
        embed_dim=SMALL["embed_dim"],
        img_size=SMALL["img_size"],
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=SMALL["num_heads"],
        patch_size=SMALL["patch_size"],
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=GLOBAL,
        window_size=SMALL["window_size"],
        out_chans=32,
    )
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0.0, 0.05 if p.dim() > 1 else 0.2)
    return enc.eval()


def small_backbone(img_size: int = SMALL["img_size"], **kwargs) -> SAMViTBackbone:
    cfg = dict(SMALL, img_size=img_size)
    net = SAMImageEncoder(**cfg, global_blocks=GLOBAL, out_blocks=OUT_BLOCKS, **kwargs)
    return SAMViTBackbone(net, out_channels=32)


def sam_state_dict(encoder: nn.Module) -> dict:
    """What SAM's checkpoint holds for this encoder (plus stand-ins for the other parts)."""
    sd = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    sd["prompt_encoder.point_embeddings.0.weight"] = torch.zeros(1, 256)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    return sd


def load(backbone: SAMViTBackbone, sd: dict, prefix: str = "") -> None:
    shapes = {k: v.shape for k, v in backbone.state_dict().items()}
    converted = convert_sam_checkpoint(sd, backbone_prefix=prefix, target_shapes=shapes)
    result = backbone.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith("pyramid.") for k in result.missing_keys)


def sam_block_outputs(encoder: ImageEncoderViT, x: torch.Tensor) -> dict:
    outs = {}
    hooks = [
        encoder.blocks[i - 1].register_forward_hook(
            lambda m, inp, out, i=i: outs.__setitem__(i, out.permute(0, 3, 1, 2))
        )
        for i in OUT_BLOCKS
    ]
    with torch.no_grad():
        encoder(x)
    for h in hooks:
        h.remove()
    return outs


def test_block_outputs_equal_sams_image_encoder():
    """Same weights (through the converter), same input: blocks 3/6/9/12 equal SAM's."""
    sam = small_sam_encoder()
    backbone = small_backbone().eval()
    load(backbone, sam_state_dict(sam))
    x = torch.randn(2, 3, 128, 128)
    expected = sam_block_outputs(sam, x)
    with torch.no_grad():
        got = backbone.net(x)
    assert list(got) == [f"block{i}" for i in OUT_BLOCKS]
    for i in OUT_BLOCKS:
        assert got[f"block{i}"].shape == (2, SMALL["embed_dim"], 8, 8)
        torch.testing.assert_close(got[f"block{i}"], expected[i], atol=1e-4, rtol=0)


def test_encoder_layout_matches_sam():
    """Window blocks, global blocks (rel-pos tables over the whole grid), LayerNorm eps."""
    net = small_backbone().net
    for i, block in enumerate(net.blocks):
        assert block.window_size == (0 if i in GLOBAL else 14)
        side = 128 // 16 if i in GLOBAL else 14
        assert block.attn.rel_pos_h.shape == (2 * side - 1, 32)
        assert block.norm1.eps == 1e-6 and block.norm2.eps == 1e-6
    assert net.pos_embed.shape == (1, 64, 96)


def test_expected_shapes_table_matches_the_encoder():
    net = SAMImageEncoder(**SMALL, global_blocks=GLOBAL)
    table = sam_encoder_shapes(**SMALL, global_blocks=GLOBAL)
    assert table == {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_pyramid_shapes_strides_and_divisibility():
    backbone = small_backbone()
    shapes = backbone.output_shape()
    assert list(shapes) == ["res2", "res3", "res4", "res5"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert all(s.channels == 32 for s in shapes.values())
    assert backbone.size_divisibility == 32
    x = torch.randn(1, 3, 96, 160)  # not square, token grid 6 x 10 (windows pad it to 14 x 14)
    with torch.no_grad():
        feats = backbone(x)
    for name, s in shapes.items():
        assert feats[name].shape == (1, 32, 96 // s.stride, 160 // s.stride)


def test_resized_position_tables_equal_runtime_interpolation():
    """A backbone built for 64 px loads the 128 px file with resized position tables and gives
    what the 128 px backbone computes at 64 px (detectron2 interpolates the same way at run
    time)."""
    sd = sam_state_dict(small_sam_encoder())
    native, resized = small_backbone(128).eval(), small_backbone(64).eval()
    load(native, sd)
    load(resized, sd)
    assert resized.net.pos_embed.shape == (1, 16, 96)
    assert resized.net.blocks[2].attn.rel_pos_h.shape == (7, 32)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = native.net(x), resized.net(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


def test_activation_checkpointing_gives_the_same_gradients():
    sd = sam_state_dict(small_sam_encoder())
    plain, ckpt = small_backbone(), small_backbone(use_act_checkpoint=True)
    load(plain, sd)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for model in (plain, ckpt):
        model.train()
        sum(f.square().mean() for f in model(x).values()).backward()
        grads.append(model.net.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_blocks_after_the_last_output_are_frozen():
    net = SAMImageEncoder(**SMALL, global_blocks=GLOBAL, out_blocks=(3, 6, 9, 10))
    assert all(p.requires_grad for b in net.blocks[:10] for p in b.parameters())
    assert not any(p.requires_grad for b in net.blocks[10:] for p in b.parameters())
    with pytest.raises(ValueError, match="OUT_BLOCKS"):
        SAMImageEncoder(**SMALL, out_blocks=(3, 13))
    with pytest.raises(ValueError, match="OUT_BLOCKS"):
        SAMImageEncoder(**SMALL, out_blocks=(6, 3))


def test_built_from_config(tiny_cfg):
    from detectron2.layers import ShapeSpec

    cfg = tiny_cfg(
        "MODEL.SAM_VIT.EMBED_DIM", "96", "MODEL.SAM_VIT.NUM_HEADS", "3",
        "MODEL.SAM_VIT.PRETRAIN_IMG_SIZE", "128", "MODEL.SAM_VIT.OUT_CHANNELS", "32",
    )  # fmt: skip
    backbone = build_sam_vit_backbone(cfg, ShapeSpec(channels=3))
    assert [s.stride for s in backbone.output_shape().values()] == [4, 8, 16, 32]
    assert backbone.net.out_blocks == [3, 6, 9, 12] and len(backbone.net.blocks) == 12
    assert [i for i, b in enumerate(backbone.net.blocks) if b.window_size == 0] == [2, 5, 8, 11]


# ---------------------------------------------------------------------------- SAM's own file
class _Model(nn.Module):
    """Stands for the meta-architecture: the backbone at ``model.backbone`` plus other modules."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(4, 4)


@pytest.fixture(scope="module")
def sam_vit_b_file(tmp_path_factory) -> str:
    """A checkpoint in the exact layout of sam_vit_b_01ec64.pth (random weights)."""
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    path = str(tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth")
    torch.save(sam.state_dict(), path)
    return path


def test_sam_vit_b_file_loads_every_encoder_tensor_unchanged(sam_vit_b_file):
    sd = torch.load(sam_vit_b_file, map_location="cpu", weights_only=True)
    assert is_sam_checkpoint(sd) and not is_sam_checkpoint({"backbone.net.pos_embed": 0})
    model = _Model(SAMViTBackbone(SAMImageEncoder()))
    converted = convert_sam_checkpoint(
        sd, target_shapes={k: v.shape for k, v in model.state_dict().items()}
    )
    result = model.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys
    # what SAM's file does not hold: the pyramid and the rest of the model
    assert result.missing_keys and all(
        not k.startswith("backbone.net.") for k in result.missing_keys
    )
    loaded = model.state_dict()
    encoder = {k: v for k, v in sd.items() if k.startswith("image_encoder.") and ".neck." not in k}
    assert (
        len(encoder) == len(converted) == len([k for k in loaded if k.startswith("backbone.net.")])
    )
    for key, value in encoder.items():
        name = "backbone.net." + key[len("image_encoder.") :].replace(".lin1.", ".fc1.").replace(
            ".lin2.", ".fc2."
        )
        if name.endswith("pos_embed"):
            value = value.reshape(1, 64 * 64, 768)
        assert torch.equal(loaded[name], value), key
    # the default expectation is SAM's ViT-B itself
    assert list(convert_sam_checkpoint(sd)) == list(converted)
    net = {
        k[len("backbone.net.") :]: tuple(v.shape)
        for k, v in loaded.items()
        if k.startswith("backbone.net.")
    }
    assert sam_encoder_shapes() == net


def test_sam_file_missing_or_misshaped_tensors_are_named(sam_vit_b_file):
    sd = torch.load(sam_vit_b_file, map_location="cpu", weights_only=True)
    broken = dict(sd)
    del broken["image_encoder.blocks.4.attn.qkv.weight"]
    broken["image_encoder.blocks.7.mlp.lin2.weight"] = torch.zeros(768, 100)
    with pytest.raises(SAMCheckpointError) as err:
        convert_sam_checkpoint(broken)
    msg = str(err.value)
    assert "missing image_encoder.blocks.4.attn.qkv.weight" in msg
    assert "wrong shape image_encoder.blocks.7.mlp.lin2.weight: [768, 100]" in msg
    assert "blocks.0" not in msg  # only the faulty tensors are named
    # an encoder tensor the backbone lacks (e.g. a bigger SAM) is an error too; the neck is not
    extra = dict(sd)
    extra["image_encoder.blocks.12.norm1.weight"] = torch.ones(768)
    with pytest.raises(SAMCheckpointError, match="unexpected image_encoder.blocks.12.norm1.weight"):
        convert_sam_checkpoint(extra)
    with pytest.raises(SAMCheckpointError, match="not a SAM checkpoint"):
        convert_sam_checkpoint({"backbone.net.pos_embed": torch.zeros(1)})


def test_sam_file_into_a_model_without_sam_backbone_is_an_error(sam_vit_b_file):
    sd = torch.load(sam_vit_b_file, map_location="cpu", weights_only=True)
    with pytest.raises(SAMCheckpointError, match="build_sam_vit_backbone"):
        convert_sam_checkpoint(sd, target_shapes={"backbone.res2.conv1.weight": (64, 3, 7, 7)})


def test_neck_is_skipped_and_reported(sam_vit_b_file, caplog):
    import logging

    sd = torch.load(sam_vit_b_file, map_location="cpu", weights_only=True)
    with caplog.at_level(logging.INFO, logger="ov2vss.modeling.backbone.sam_checkpoint"):
        converted = convert_sam_checkpoint(sd)
    assert not any("neck" in k for k in converted)
    assert "skipped 6 tensors of SAM's neck" in caplog.text
    assert "image_encoder.neck.0.weight" in caplog.text


# ---------------------------------------------------------------------------- in the model
def test_model_with_sam_backbone_trains(tiny_cfg):
    """The ViT-B config's path at toy size: every trainable parameter gets a gradient (DDP),
    here together with the "vv" dense CLIP features."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    cfg = tiny_cfg(
        "MODEL.BACKBONE.NAME", "build_sam_vit_backbone",
        "MODEL.SAM_VIT.EMBED_DIM", "96", "MODEL.SAM_VIT.NUM_HEADS", "3",
        "MODEL.SAM_VIT.PRETRAIN_IMG_SIZE", "128", "MODEL.SAM_VIT.OUT_CHANNELS", "16",
        "MODEL.SAM_VIT.USE_ACT_CHECKPOINT", "True", "MODEL.CLIP.DENSE_MODE", "vv",
        "MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]",
        "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]",
        "MODEL.CLIP.INPUT_SIZE", "32", "MODEL.OV2VSS.HIDDEN_DIM", "32",
    )  # fmt: skip
    model = build_model(cfg)
    assert isinstance(model.backbone, SAMViTBackbone) and model.size_divisibility >= 32
    if model.vte is not None:  # zero-initialised residual branches would block gradients at step 0
        nn.init.normal_(model.vte.attn.out_proj.weight, std=0.02)
        if model.vte.ffn is not None:
            nn.init.normal_(model.vte.ffn[-1].weight, std=0.02)
    g = torch.Generator().manual_seed(1)
    batch = []
    for _ in range(2):
        sem_seg = torch.randint(0, len(model.train_class_texts), (64, 64), generator=g)
        frames = torch.randint(0, 256, (4, 3, 64, 64), generator=g, dtype=torch.uint8)
        random_frame = torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8)
        batch.append(
            dict(frames=frames, random_frame=random_frame, sem_seg=sem_seg, height=64, width=64)
        )
    model.train()
    losses = model(batch)
    sum(losses.values()).backward()
    dead = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))
    ]
    assert not dead, f"no gradient reaches {dead}"


def test_a_different_sam_size_is_refused_with_a_short_message(sam_vit_b_file):
    """SAM ViT-B's file into a narrower backbone: every tensor is wrong, the message says how
    many and lists the first ones."""
    sd = torch.load(sam_vit_b_file, map_location="cpu", weights_only=True)
    shapes = {
        "backbone.net." + k: v for k, v in sam_encoder_shapes(embed_dim=96, num_heads=3).items()
    }
    with pytest.raises(SAMCheckpointError, match=r"171 problem\(s\)") as err:
        convert_sam_checkpoint(sd, target_shapes=shapes)
    assert "wrong shape image_encoder.patch_embed.proj.weight" in str(err.value)
    assert "... and 131 more" in str(err.value)


def test_model_weights_accepts_sams_file_through_the_checkpointer(sam_vit_b_file, tmp_path):
    """What train_net does with MODEL.WEIGHTS sam_vit_b_01ec64.pth: the encoder loads
    strictly, the rest of the model keeps its initialisation; evaluation refuses the file."""
    from ov2vss.checkpoint import OV2VSSCheckpointer
    from ov2vss.checkpoint_io import CheckpointError

    sd = torch.load(sam_vit_b_file, map_location="cpu", weights_only=True)
    model = _Model(SAMViTBackbone(SAMImageEncoder()))
    head = model.head.weight.clone()
    OV2VSSCheckpointer(model).resume_or_load(sam_vit_b_file, resume=False)
    loaded = model.state_dict()
    key = "image_encoder.blocks.4.mlp.lin1.weight"
    assert torch.equal(loaded["backbone.net.blocks.4.mlp.fc1.weight"], sd[key])
    assert torch.equal(
        loaded["backbone.net.patch_embed.proj.weight"], sd["image_encoder.patch_embed.proj.weight"]
    )
    assert torch.equal(model.head.weight, head)
    with pytest.raises(
        CheckpointError, match="SAM's image-encoder checkpoint, not a trained OV2VSS"
    ):
        OV2VSSCheckpointer(model, strict=True).load(sam_vit_b_file)

    partial = tmp_path / "sam_partial.pth"
    torch.save({k: v for k, v in sd.items() if k != key}, partial)
    with pytest.raises(CheckpointError, match=rf"{partial}: SAM checkpoint(.|\n)*missing {key}"):
        OV2VSSCheckpointer(model).load(str(partial))
    truncated = tmp_path / "sam_truncated.pth"
    truncated.write_bytes(open(sam_vit_b_file, "rb").read()[:100000])
    with pytest.raises(CheckpointError, match=f"checkpoint file {truncated} is corrupt"):
        OV2VSSCheckpointer(model).load(str(truncated))
