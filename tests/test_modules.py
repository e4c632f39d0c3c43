"""Unit tests of the OV2VSS building blocks (ov2vss.modeling), one section per paper component.

Each module is checked for output shapes, for gradients reaching every trainable parameter
(a parameter without gradient is dead weight and breaks DistributedDataParallel), and for
the equation it implements, against numbers computed independently here.
"""

import math
from typing import List, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ov2vss.modeling import (
    CLIPAdapter,
    CLIPViTBackbone,
    OpenVocabularyHead,
    P2TPooling,
    RandomFrameEnhancement,
    SpatialTemporalContextFusion,
    TextAlignedAuxHead,
    VideoTextEncoder,
    cosine_cost_volume,
)
from ov2vss.modeling.clip import build_open_clip, get_prompt_templates, vit_patch_tokens

TINY_CLIP = "OV2VSS-Tiny-CLIP"  # shipped open_clip config: width 64, 2+2 blocks, patch 8, 96 px


# ---------------------------------------------------------------------------------- helpers
def assert_every_param_has_grad(module: nn.Module) -> None:
    """Every trainable parameter got a non-zero gradient from the last backward."""
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert trainable, "the module has no trainable parameters"
    dead = [n for n, p in trainable if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"no gradient reaches {dead}"


class OpRecorder(TorchDispatchMode):
    """Records the output shape of every aten op run inside the `with` block."""

    def __init__(self):
        super().__init__()
        self.outputs: List[Tuple[str, Tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.outputs.append((str(func.overloadpacket.__name__), tuple(t.shape)))
        return out

    def shapes(self, op: str) -> List[Tuple[int, ...]]:
        return [s for name, s in self.outputs if name == op]

    @property
    def max_numel(self) -> int:
        return max(math.prod(s) for _, s in self.outputs)


def manual_adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size*size] by explicit bin means (bins floor(iH/s)..ceil((i+1)H/s))."""
    h, w = x.shape[-2:]
    cells = []
    for i in range(size):
        y0, y1 = (i * h) // size, -((-(i + 1) * h) // size)
        for j in range(size):
            x0, x1 = (j * w) // size, -((-(j + 1) * w) // size)
            cells.append(x[:, :, y0:y1, x0:x1].mean(dim=(2, 3)))
    return torch.stack(cells, dim=2)


def manual_layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def fresh_tiny_clip() -> nn.Module:
    return build_open_clip(TINY_CLIP, "")


# ---------------------------------------------------------------------------------- P2T pooling
@pytest.mark.parametrize("hw", [(6, 6), (7, 9), (20, 33), (3, 50)])
def test_p2t_token_count_is_fixed_at_every_input_size(hw):
    pool = P2TPooling(8, (1, 2, 3, 6))
    out = pool(torch.randn(2, 8, *hw))
    assert pool.num_tokens == 1 + 4 + 9 + 36
    assert out.shape == (2, 50, 8)


def test_p2t_equals_manual_adaptive_pooling_with_zero_depthwise_conv():
    pool = P2TPooling(5, (1, 2, 3))
    for conv in pool.dw_convs:
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    x = torch.randn(2, 5, 11, 7)  # sizes not divisible by the grids: overlapping bins
    expected = torch.cat([manual_adaptive_avg_pool(x, s) for s in (1, 2, 3)], dim=2).transpose(1, 2)
    torch.testing.assert_close(pool(x), manual_layer_norm(expected), atol=1e-5, rtol=1e-5)


def test_p2t_depthwise_conv_is_per_channel_residual():
    """On the 1x1 grid a 3x3 depthwise conv with padding 1 sees only its centre tap:
    token_0 = LN(m * (1 + w_centre) + b) with m the channel mean, channel by channel."""
    pool = P2TPooling(4, (1,))
    x = torch.randn(3, 4, 9, 10)
    w = pool.dw_convs[0].weight[:, 0, 1, 1].detach()
    b = pool.dw_convs[0].bias.detach()
    m = x.mean(dim=(2, 3))
    torch.testing.assert_close(
        pool(x)[:, 0], manual_layer_norm(m * (1 + w) + b), atol=1e-5, rtol=1e-5
    )


def test_p2t_gradients_and_bad_sizes():
    pool = P2TPooling(6, (1, 2, 3))
    pool(torch.randn(2, 6, 9, 13)).pow(2).sum().backward()
    assert_every_param_has_grad(pool)
    for bad in ([], [0, 2], [-1]):
        with pytest.raises(ValueError, match="POOL_SIZES"):
            P2TPooling(6, bad)


# ---------------------------------------------------------------------------------- STCF
DIM = 16
SCALES = [(16, 20), (8, 10), (4, 5)]  # U^1..U^3 sizes of a 64x80 frame at strides 4, 8, 16


def make_stcf(
    fusion: str = "concat", num_scales: int = 3, pool_sizes=(1, 2, 3)
) -> SpatialTemporalContextFusion:
    pools = nn.ModuleList(P2TPooling(DIM, pool_sizes) for _ in range(num_scales))
    return SpatialTemporalContextFusion(DIM, pools, fusion)


def clip_features(num_frames: int, bsz: int = 2, scales=SCALES) -> List[List[torch.Tensor]]:
    return [[torch.randn(bsz, DIM, h, w) for h, w in scales] for _ in range(num_frames)]


def run_stcf(stcf, feats):
    first = [pool(f) for pool, f in zip(stcf.pools, feats[0])]
    return stcf(feats, first)


@pytest.mark.parametrize("fusion", ["concat", "add"])
def test_stcf_shape_and_gradients(fusion):
    stcf = make_stcf(fusion)
    feats = clip_features(4)
    out = run_stcf(stcf, feats)
    assert out.shape == (2, DIM, *SCALES[0])
    out.pow(2).sum().backward()
    assert_every_param_has_grad(stcf)


def test_stcf_attention_is_hw_by_p_never_hw_by_hw():
    """Every attention map is [B, H_l W_l, P]; no tensor ever grows with (HW)^2."""
    scales = [(32, 32), (16, 16), (8, 8)]
    stcf = make_stcf(pool_sizes=(1, 2, 3, 6))
    feats = clip_features(4, bsz=1, scales=scales)
    with torch.no_grad(), OpRecorder() as rec:
        run_stcf(stcf, feats)
    softmax_shapes = rec.shapes("_softmax")
    # 2 intermediate steps + the target step, each at 3 scales
    assert sorted(softmax_shapes) == sorted([(1, h * w, 50) for h, w in scales] * 3)
    hw = 32 * 32
    assert rec.max_numel < hw * hw / 8, f"a tensor of {rec.max_numel} values for HW={hw}"


def test_stcf_single_scale_equals_eqs_3_4_6():
    """One scale, frames (t-k, t), "add": O = LN(U_t + softmax(Q K^T / sqrt(C)) V), with
    Q = FC(U_t), K, V = FC(f(U_{t-k}))."""
    stcf = make_stcf("add", num_scales=1)
    u0, u1 = torch.randn(2, DIM, 6, 7), torch.randn(2, DIM, 6, 7)
    out = run_stcf(stcf, [[u0], [u1]])
    with torch.no_grad():
        past = stcf.pools[0](u0)
        q = u1.flatten(2).transpose(1, 2) @ stcf.q_proj[0].weight.T + stcf.q_proj[0].bias
        k = past @ stcf.k_proj[0].weight.T + stcf.k_proj[0].bias
        v = past @ stcf.v_proj[0].weight.T + stcf.v_proj[0].bias
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(DIM), dim=-1)
        expected = manual_layer_norm(u1.flatten(2).transpose(1, 2) + attn @ v)
        expected = expected * stcf.norm.weight + stcf.norm.bias
    torch.testing.assert_close(
        out, expected.transpose(1, 2).reshape(u1.shape), atol=1e-5, rtol=1e-5
    )


def manual_token_maps(stcf, feats, scales):
    """Eqs. 3-4 by hand for the two-frame clip ``feats``: per scale s, the attention maps
    A^s (B x P x h x w, one map per pooled token of frame t-1) and the values V^s."""
    maps, values = [], []
    for s, (h, w) in enumerate(scales):
        past = stcf.pools[s](feats[0][s])
        q = stcf.q_proj[s](feats[1][s].flatten(2).transpose(1, 2))
        k, v = stcf.k_proj[s](past), stcf.v_proj[s](past)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(DIM), dim=-1)
        maps.append(a.transpose(1, 2).reshape(a.shape[0], -1, h, w))
        values.append(v)
    return maps, values


def manual_concat_fusion(stcf, feats, b1: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Eqs. 6-7 by hand: O_t = B^1 V^1, concatenated with frame t's own tokens, fused and
    normalised; returned as a B x C x h x w map like the module's output."""
    o_t = b1.flatten(2).transpose(1, 2) @ v1
    own = feats[1][0].flatten(2).transpose(1, 2)
    fused = stcf.norm(stcf.fuse(torch.cat([own, o_t], dim=-1)))
    return fused.transpose(1, 2).reshape(feats[1][0].shape)


def test_stcf_cross_scale_aggregation_equals_eq_5():
    """Two scales: B^2 = A^2, B^1 = Conv(Upsample(B^2) + A^1), O_t = B^1 V^1, concat fusion."""
    stcf = make_stcf("concat", num_scales=2)
    scales = SCALES[:2]
    feats = clip_features(2, scales=scales)
    out = run_stcf(stcf, feats)
    with torch.no_grad():
        maps, values = manual_token_maps(stcf, feats, scales)
        up = F.interpolate(maps[1], size=scales[0], mode="bilinear", align_corners=False)
        b1 = F.conv2d(up + maps[0], stcf.aggregate[0].weight, stcf.aggregate[0].bias, padding=1)
        expected = manual_concat_fusion(stcf, feats, b1, values[0])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_stcf_shared_aggregation_equals_eq_5_with_one_conv_per_token_map():
    """AGGREGATE "shared" (the official HPN): B^1 = Conv(Upsample(B^2) + A^1) with one 1 -> 1
    conv applied to each token's map on its own; works with P2T "ratio" pools (P varies)."""
    scales = SCALES[:2]
    pools = nn.ModuleList(P2TPooling(DIM, mode="ratio", stride=s) for s in (4, 8))
    stcf = SpatialTemporalContextFusion(DIM, pools, "concat", aggregate="shared")
    assert stcf.aggregate[0].weight.shape == (1, 1, 3, 3)
    feats = clip_features(2, scales=scales)
    out = run_stcf(stcf, feats)
    with torch.no_grad():
        maps, values = manual_token_maps(stcf, feats, scales)
        num_tokens = maps[0].shape[1]
        assert num_tokens == pools[0].token_count(*scales[0]) == pools[1].token_count(*scales[1])
        up = F.interpolate(maps[1], size=scales[0], mode="bilinear", align_corners=False)
        conv = stcf.aggregate[0]
        b1 = torch.cat(
            [F.conv2d((up + maps[0])[:, p : p + 1], conv.weight, conv.bias, padding=1)
             for p in range(num_tokens)],
            dim=1,
        )  # fmt: skip
        expected = manual_concat_fusion(stcf, feats, b1, values[0])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_stcf_fusion_is_gradual_over_every_frame():
    """Every clip frame reaches O_t, and the order matters (t-9 -> t-6 -> t-3 -> t)."""
    stcf = make_stcf().eval()
    feats = clip_features(4)
    with torch.no_grad():
        base = run_stcf(stcf, feats)
        for i in range(3):
            changed = [list(f) for f in feats]
            changed[i] = [torch.randn_like(x) for x in changed[i]]
            assert (run_stcf(stcf, changed) - base).abs().max() > 1e-3, f"frame {i} is ignored"
        swapped = [feats[0], feats[2], feats[1], feats[3]]
        assert (run_stcf(stcf, swapped) - base).abs().max() > 1e-3


def test_stcf_rejects_bad_config():
    with pytest.raises(ValueError, match="FUSION"):
        make_stcf("mean")
    pools = nn.ModuleList([P2TPooling(DIM, (1, 2)), P2TPooling(DIM, (1, 2, 3))])
    with pytest.raises(ValueError, match="same number of tokens"):
        SpatialTemporalContextFusion(DIM, pools)
    with pytest.raises(ValueError, match="AGGREGATE"):
        SpatialTemporalContextFusion(DIM, nn.ModuleList([P2TPooling(DIM)]), aggregate="mean")


# ---------------------------------------------------------------------------------- RFE
def make_rfe(num_regions: int = 5) -> RandomFrameEnhancement:
    return RandomFrameEnhancement(DIM, num_scales=3, num_regions=num_regions, num_heads=4)


def test_rfe_shapes_and_gradients():
    rfe = make_rfe()
    pooled = [torch.randn(2, 14, DIM) for _ in range(3)]
    regions = rfe.regions(pooled)
    assert regions.shape == (2, 5, DIM)
    o_t = torch.randn(2, DIM, 9, 11)
    out = rfe(o_t, regions)
    assert out.shape == o_t.shape
    out.pow(2).sum().backward()
    assert_every_param_has_grad(rfe)


def test_rfe_regions_are_soft_averages_of_the_projected_tokens():
    """L_r = softmax(L_d) D_random (Eq. 9): with identical tokens every region is that token."""
    rfe = make_rfe()
    token = [torch.randn(2, 1, DIM) for _ in range(3)]
    pooled = [t.expand(2, 14, DIM) for t in token]
    merged = rfe.merge(torch.cat(token, dim=-1))  # [2, 1, DIM]
    torch.testing.assert_close(rfe.regions(pooled), merged.expand(2, 5, DIM), atol=1e-5, rtol=1e-5)


def test_rfe_cross_attention_equals_eq_10_for_identical_regions():
    """All regions equal r: attention weights are uniform whatever Q, so
    O^_t = LN(O_t + W_o (W_v r + b_v) + b_o) at every pixel."""
    rfe = make_rfe()
    r = torch.randn(2, 1, DIM)
    o_t = torch.randn(2, DIM, 4, 6)
    out = rfe(o_t, r.expand(2, 5, DIM))
    with torch.no_grad():
        w_v, b_v = rfe.attn.in_proj_weight[2 * DIM :], rfe.attn.in_proj_bias[2 * DIM :]
        ctx = (r @ w_v.T + b_v) @ rfe.attn.out_proj.weight.T + rfe.attn.out_proj.bias  # [2, 1, DIM]
        expected = rfe.norm(o_t.flatten(2).transpose(1, 2) + ctx)
    torch.testing.assert_close(
        out, expected.transpose(1, 2).reshape(o_t.shape), atol=1e-5, rtol=1e-5
    )


def test_rfe_conv3x3_region_head_is_a_3_tap_conv_along_the_tokens():
    """REGION_HEAD "conv3x3" (the official dsn_head on a [1, C, 1, P] layout): L_d =
    Conv1x1(ReLU(BN(Conv1d_k3(D)))) per window; windows of a batch do not mix (eval mode)."""
    rfe = RandomFrameEnhancement(DIM, 3, num_regions=81, num_heads=4, region_head="conv3x3")
    rfe.train()
    pooled = [torch.randn(2, 14, DIM) for _ in range(3)]
    regions = rfe.regions(pooled)
    assert regions.shape == (2, 81, DIM)
    regions.pow(2).sum().backward()
    assert_every_param_has_grad(rfe.region_logits)
    rfe.eval()
    with torch.no_grad():
        conv, bn, _, out_conv = rfe.region_logits
        d = rfe.merge(torch.cat(pooled, dim=-1))  # [B, P, C]
        x = F.conv1d(d.transpose(1, 2), conv.weight, conv.bias, padding=1)
        x = (x - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps)
        x = F.relu(x * bn.weight[:, None] + bn.bias[:, None])
        weights = torch.softmax(F.conv1d(x, out_conv.weight, out_conv.bias), dim=-1)
        torch.testing.assert_close(rfe.regions(pooled), weights @ d, atol=1e-5, rtol=1e-5)
        other = [torch.cat([p[:1], torch.randn(1, 14, DIM)]) for p in pooled]
        torch.testing.assert_close(rfe.regions(other)[0], rfe.regions(pooled)[0])
    with pytest.raises(ValueError, match="REGION_HEAD"):
        RandomFrameEnhancement(DIM, 3, region_head="conv5x5")


# ---------------------------------------------------------------------------------- VTE
def test_vte_starts_as_identity_then_learns():
    """Zero-initialised residual branches: F^T_bar = F^T at init (training starts from CLIP's
    embeddings), yet the zero layers get gradients, and once they move every parameter does."""
    vte = VideoTextEncoder(DIM, num_heads=4, use_ffn=True)
    text, visual = torch.randn(7, DIM), torch.randn(2, 30, DIM)
    out = vte(text, visual)
    assert out.shape == (2, 7, DIM)
    torch.testing.assert_close(out, text.expand(2, 7, DIM), atol=0, rtol=0)
    out.pow(3).sum().backward()
    assert torch.any(vte.attn.out_proj.weight.grad != 0) and torch.any(vte.ffn[-1].weight.grad != 0)

    nn.init.normal_(vte.attn.out_proj.weight, std=0.1)
    nn.init.normal_(vte.ffn[-1].weight, std=0.1)
    vte.zero_grad()
    out = vte(text, visual)
    assert (out - text).abs().max() > 1e-3
    # the refined text depends on the video's features
    assert (vte(text, torch.randn(2, 30, DIM)) - out).abs().max() > 1e-3
    out.pow(3).sum().backward()
    assert_every_param_has_grad(vte)


def test_vte_without_ffn_and_batched_text():
    vte = VideoTextEncoder(DIM, num_heads=2, use_ffn=False)
    assert vte.ffn is None
    nn.init.normal_(vte.attn.out_proj.weight, std=0.1)
    text, visual = torch.randn(3, DIM), torch.randn(2, 12, DIM)
    shared = vte(text, visual)
    batched = vte(text.expand(2, 3, DIM), visual)
    torch.testing.assert_close(shared, batched)
    # each class is refined on its own: a class's output does not depend on the others
    torch.testing.assert_close(vte(text[:1], visual), shared[:, :1], atol=1e-6, rtol=1e-5)


def test_vte_refines_each_class_and_template_on_its_own():
    """Templates as channels: text [N, T, D] -> [B, N, T, D], every (class, template) a query
    of its own (the official VideoSpecificPrompt), class chunks change nothing."""
    vte = VideoTextEncoder(DIM, num_heads=2, class_chunk=2, template_channels=True)
    nn.init.normal_(vte.attn.out_proj.weight, std=0.1)
    nn.init.normal_(vte.ffn[-1].weight, std=0.1)
    text, visual = torch.randn(5, 3, DIM), torch.randn(2, 12, DIM)
    out = vte(text, visual)
    assert out.shape == (2, 5, 3, DIM)
    flat = VideoTextEncoder(DIM, num_heads=2, class_chunk=64)
    flat.load_state_dict(vte.state_dict())
    torch.testing.assert_close(out, flat(text.reshape(15, DIM), visual).view(2, 5, 3, DIM))
    torch.testing.assert_close(vte(text[2:3, 1:2], visual), out[:, 2:3, 1:2], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(vte(text.expand(2, 5, 3, DIM), visual), out)
    with pytest.raises(ValueError, match="templates as channels"):
        vte(torch.randn(5, DIM), visual)


def test_cosine_cost_volume_equals_explicit_cosine():
    text, visual = torch.randn(2, 4, DIM), torch.randn(2, DIM, 3, 5)
    cost = cosine_cost_volume(text, visual)
    assert cost.shape == (2, 4, 3, 5)
    expected = torch.empty(2, 4, 3, 5)
    for b in range(2):
        for n in range(4):
            for y in range(3):
                for x in range(5):
                    t, v = text[b, n], visual[b, :, y, x]
                    expected[b, n, y, x] = torch.dot(t, v) / (t.norm() * v.norm())
    torch.testing.assert_close(cost, expected, atol=1e-6, rtol=1e-5)
    # shared [N, D] text, and invariance to the scale of either side
    shared = cosine_cost_volume(text[0] * 7.0, visual * 0.01)
    torch.testing.assert_close(shared[0], expected[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(shared, cosine_cost_volume(text[0].expand(2, 4, DIM), visual))


# ---------------------------------------------------------------------------------- heads
def make_head(temporal_dim: int = 24) -> OpenVocabularyHead:
    return OpenVocabularyHead(
        pos_in_channels=10, temporal_dim=temporal_dim, cost_dim=8, pos_dim=6, decoder_dim=12
    )


@pytest.mark.parametrize("num_classes", [1, 3, 40])
def test_head_any_number_of_classes(num_classes):
    head = make_head()
    cost = torch.rand(2, num_classes, 12, 16) * 2 - 1
    out = head(cost, torch.randn(2, 10, 24, 32), torch.randn(2, 24, 12, 16), (6, 8))
    assert out.shape == (2, num_classes, 6, 8)
    out.pow(2).sum().backward()
    assert_every_param_has_grad(head)


def test_head_scores_each_class_independently():
    """The same weights serve any vocabulary: class i's logits do not depend on the others."""
    head = make_head().eval()
    cost = torch.rand(2, 40, 12, 16) * 2 - 1
    u1, o_hat = torch.randn(2, 10, 24, 32), torch.randn(2, 24, 12, 16)
    with torch.no_grad():
        full = head(cost, u1, o_hat, (12, 16))
        for idx in ([0, 1, 2], [39], [5, 17]):
            torch.testing.assert_close(
                head(cost[:, idx], u1, o_hat, (12, 16)), full[:, idx], atol=1e-5, rtol=1e-5
            )


def test_head_with_template_channels():
    """A [B, N, T, h, w] cost volume: the first conv takes the T channels of a class; classes
    stay independent; a cost volume with another T is refused."""
    head = OpenVocabularyHead(
        pos_in_channels=10, temporal_dim=24, cost_dim=8, pos_dim=6, decoder_dim=12, text_channels=5
    )
    assert head.cost_conv[0].in_channels == 5
    cost = torch.rand(2, 7, 5, 12, 16) * 2 - 1
    u1, o_hat = torch.randn(2, 10, 24, 32), torch.randn(2, 24, 12, 16)
    out = head(cost, u1, o_hat, (6, 8))
    assert out.shape == (2, 7, 6, 8)
    out.pow(2).sum().backward()
    assert_every_param_has_grad(head)
    with torch.no_grad():
        torch.testing.assert_close(head(cost[:, 3:5], u1, o_hat, (6, 8)), out[:, 3:5].detach())
    with pytest.raises(ValueError, match="5 cost-volume channel"):
        head(cost[:, :, :2], u1, o_hat, (6, 8))
    with pytest.raises(ValueError, match="5 cost-volume channel"):
        head(cost[:, :, 0], u1, o_hat, (6, 8))


def test_head_never_builds_the_joined_class_pixel_tensor():
    """docs/OFFICIAL_CODE.md (head cost): the O^_t part of the first decoder layer is computed once per pixel, so
    no tensor holds N x (C' + C) values per pixel (here C = 96 temporal channels)."""
    head = make_head(temporal_dim=96).eval()
    n, h, w = 30, 12, 16
    cost = torch.rand(1, n, h, w)
    with torch.no_grad(), OpRecorder() as rec:
        head(cost, torch.randn(1, 10, 24, 32), torch.randn(1, 96, h, w), (h, w))
    joined = n * (8 + 96) * h * w
    assert rec.max_numel <= n * max(8, 12) * h * w < joined


@pytest.mark.parametrize("num_classes", [1, 3, 40])
def test_aux_head_shapes_bounds_and_gradients(num_classes):
    aux = TextAlignedAuxHead(DIM, embed_dim=10)
    o_t, text = torch.randn(2, DIM, 7, 9), torch.randn(num_classes, 10)
    logits = aux(o_t, text)
    assert logits.shape == (2, num_classes, 7, 9)
    # cosine logits times the learnable scale 1 / 0.07
    assert logits.abs().max() <= 1 / 0.07 + 1e-4
    torch.testing.assert_close(aux(o_t, text.expand(2, num_classes, 10)), logits)
    logits.pow(2).sum().backward()
    assert_every_param_has_grad(aux)


# ---------------------------------------------------------------------------------- CLIP adapter
def make_adapter(
    finetune: str = "none", templates: Sequence[str] = ("a photo of a {}.",), input_size: int = 32
) -> CLIPAdapter:
    return CLIPAdapter(
        fresh_tiny_clip(), TINY_CLIP, templates, finetune=finetune, input_size=input_size
    )


class CallCounter:
    """Wraps model.encode_text to count how often the text tower runs."""

    def __init__(self, model: nn.Module):
        self.calls = 0
        self._inner = model.encode_text
        model.encode_text = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._inner(*args, **kwargs)


def test_clip_text_embeddings_are_lazy_and_cached_per_vocabulary():
    adapter = make_adapter().eval()
    counter = CallCounter(adapter.model)
    assert adapter._text_cache == {} and counter.calls == 0  # nothing computed in __init__
    a = adapter.encode_vocabulary(["red circle", "blue star"])
    assert a.shape == (2, 64)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(
        adapter.encode_vocabulary(["red circle", "blue star"]), a, atol=0, rtol=0
    )
    assert counter.calls == 1
    b = adapter.encode_vocabulary(["blue star"])
    assert counter.calls == 2
    torch.testing.assert_close(b[0], a[1], atol=1e-6, rtol=1e-5)  # per-class, order-free
    adapter.train()  # a frozen text tower keeps its cache while training
    adapter.encode_vocabulary(["red circle", "blue star"])
    assert counter.calls == 2
    with pytest.raises(ValueError, match="empty"):
        adapter.encode_vocabulary([])


def test_clip_trainable_text_tower_is_not_cached_in_training():
    adapter = make_adapter("full").train()
    counter = CallCounter(adapter.model)
    emb = adapter.encode_vocabulary(["red circle"])
    adapter.encode_vocabulary(["red circle"])
    assert counter.calls == 2 and emb.requires_grad
    adapter.eval()
    adapter.encode_vocabulary(["red circle"])
    adapter.encode_vocabulary(["red circle"])
    assert counter.calls == 3


def test_clip_embeddings_average_over_templates(monkeypatch):
    import open_clip

    from ov2vss.modeling.clip import adapter as clip_adapter

    templates = ["a photo of a {}.", "a drawing of the {}", "{} in the scene"]
    adapter = make_adapter(templates=templates).eval()
    monkeypatch.setattr(clip_adapter, "_TEXT_CHUNK", 4)  # 6 prompts -> text tower runs on 4 + 2
    counter = CallCounter(adapter.model)
    emb = adapter.encode_vocabulary(["red circle", "green star"])
    assert counter.calls == 2
    tokenizer = open_clip.get_tokenizer(TINY_CLIP)
    with torch.no_grad():
        for i, name in enumerate(["red circle", "green star"]):
            per_template = F.normalize(
                adapter.model.encode_text(tokenizer([t.format(name) for t in templates])), dim=-1
            )
            torch.testing.assert_close(
                emb[i], F.normalize(per_template.mean(0), dim=0), atol=1e-5, rtol=1e-5
            )
    single = make_adapter(templates=templates[:1])
    single.model.load_state_dict(adapter.model.state_dict())
    assert (single.eval().encode_vocabulary(["red circle"])[0] - emb[0]).abs().max() > 1e-4


def test_clip_templates_as_channels():
    """TEMPLATE_MODE "channels": [N, T, D] unit embeddings, one per template; their
    template_mean is exactly "mean" mode's embedding; both modes are cached separately."""
    from ov2vss.modeling.clip import template_mean

    templates = ["a photo of a {}.", "a drawing of the {}", "{} in the scene"]
    adapter = CLIPAdapter(fresh_tiny_clip(), TINY_CLIP, templates, template_mode="channels").eval()
    assert adapter.text_channels == 3
    counter = CallCounter(adapter.model)
    names = ["red circle", "green star"]
    emb = adapter.encode_vocabulary(names)
    assert emb.shape == (2, 3, 64)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 3))
    mean = adapter.encode_vocabulary(names, template_mode="mean")
    assert counter.calls == 2 and mean.shape == (2, 64)
    torch.testing.assert_close(template_mean(emb), mean, atol=0, rtol=0)
    adapter.encode_vocabulary(names)
    assert counter.calls == 2  # cached per mode
    with pytest.raises(ValueError, match="TEMPLATE_MODE"):
        CLIPAdapter(fresh_tiny_clip(), TINY_CLIP, templates, template_mode="max")


def test_prompt_template_sets():
    assert len(get_prompt_templates("vild")) == 14
    assert len(get_prompt_templates("imagenet")) == 80
    assert get_prompt_templates("single") == ["a photo of a {}."]
    assert all("{}" in t for t in get_prompt_templates("imagenet"))
    assert get_prompt_templates(["{} here"]) == ["{} here"]
    with pytest.raises(ValueError, match="PROMPT_TEMPLATES"):
        get_prompt_templates("coco")
    with pytest.raises(ValueError, match="contain"):
        get_prompt_templates(["no placeholder"])


@pytest.mark.parametrize("hw, grid", [((40, 70), (4, 7)), ((100, 50), (8, 4)), ((32, 32), (4, 4))])
def test_clip_dense_features_on_non_square_frames(hw, grid):
    """Short side -> input_size (32 px = 4 patches of 8), long side kept in proportion."""
    adapter = make_adapter(input_size=32)
    dense = adapter.dense_features(torch.rand(2, 3, *hw) * 255)
    assert dense.shape == (2, 64, *grid)


def test_clip_dense_features_match_open_clip_patch_tokens_at_native_size():
    """At the tower's own 96 px, F^V = ln_post(patch tokens) @ proj from open_clip's forward."""
    adapter = make_adapter(input_size=96).eval()
    images = torch.rand(2, 3, 96, 96) * 255
    visual = adapter.model.visual
    visual.output_tokens = True
    with torch.no_grad():
        _, tokens = visual((images - adapter.pixel_mean) / adapter.pixel_std)
        expected = (tokens @ visual.proj).transpose(1, 2).reshape(2, 64, 12, 12)
        torch.testing.assert_close(adapter.dense_features(images), expected, atol=1e-5, rtol=1e-5)


def test_clip_finetune_modes_select_parameters():
    def trainable(mode: str) -> List[str]:
        return [n for n, p in make_adapter(mode).model.named_parameters() if p.requires_grad]

    names = [n for n, _ in fresh_tiny_clip().named_parameters()]
    assert trainable("none") == []
    assert trainable("image") == [n for n in names if n.startswith("visual.")]
    attention = trainable("attention")
    assert attention and all(".attn." in n for n in attention)
    assert any(n.startswith("visual.") for n in attention) and any(
        n.startswith("transformer.") for n in attention
    )
    # "full" trains everything OV2VSS uses; CLIP's own contrastive logit scale is never used
    assert trainable("full") == [n for n in names if n != "logit_scale"]
    with pytest.raises(ValueError, match="FINETUNE"):
        make_adapter("partial")


def test_clip_image_finetune_gradients_reach_the_whole_image_tower():
    adapter = make_adapter("image").train()
    adapter.dense_features(torch.rand(1, 3, 40, 56) * 255).pow(2).sum().backward()
    assert_every_param_has_grad(adapter)


def test_clip_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "clip" / "ViT-B-16.pt")
    with pytest.raises(FileNotFoundError, match=f"MODEL.CLIP.PRETRAINED.*{missing}"):
        build_open_clip(TINY_CLIP, missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="could not load CLIP weights.*corrupt.pt"):
        build_open_clip(TINY_CLIP, str(corrupt))
    with pytest.raises(ValueError, match="MODEL.CLIP.ARCH"):
        build_open_clip("No-Such-CLIP", "")


# a local CLIP checkpoint file loads tensor for tensor: test_checkpoint.py (under weights_only)


# ---------------------------------------------------------------------------------- ViT backbone
def test_clip_vit_backbone_shapes_strides_and_gradients():
    backbone = CLIPViTBackbone(
        fresh_tiny_clip().visual, out_layers=[1, 2], out_strides=[4, 16], out_channels=12
    )
    assert backbone.size_divisibility == 16
    spec = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in spec.items()} == {
        "res2": (12, 4),
        "res3": (12, 16),
    }
    outs = backbone(torch.randn(2, 3, 64, 96))
    assert outs["res2"].shape == (2, 12, 16, 24) and outs["res3"].shape == (2, 12, 4, 6)
    sum(o.pow(2).sum() for o in outs.values()).backward()
    assert_every_param_has_grad(backbone)
    # the pooled-embedding head never runs in the backbone, so it must not be trainable
    frozen = sorted(n for n, p in backbone.named_parameters() if not p.requires_grad)
    assert frozen == ["visual.ln_post.bias", "visual.ln_post.weight", "visual.proj"]


def test_clip_vit_backbone_freezes_blocks_after_the_last_output():
    backbone = CLIPViTBackbone(
        fresh_tiny_clip().visual, out_layers=[1], out_strides=[8], out_channels=8
    )
    assert not any(p.requires_grad for p in backbone.visual.transformer.resblocks[1].parameters())
    backbone(torch.randn(1, 3, 32, 40))["res2"].sum().backward()
    assert_every_param_has_grad(backbone)


def test_clip_vit_backbone_rejects_bad_layers():
    with pytest.raises(ValueError, match="OUT_LAYERS"):
        CLIPViTBackbone(
            fresh_tiny_clip().visual, out_layers=[1, 3], out_strides=[4, 8], out_channels=8
        )
    with pytest.raises(ValueError, match="differ in length"):
        CLIPViTBackbone(
            fresh_tiny_clip().visual, out_layers=[1, 2], out_strides=[4], out_channels=8
        )


def test_vit_patch_tokens_follow_the_requested_layer_order():
    visual = fresh_tiny_clip().visual
    x = torch.randn(1, 3, 32, 48)
    last, first = vit_patch_tokens(visual, x, [2]), vit_patch_tokens(visual, x, [1])
    tokens = vit_patch_tokens(visual, x, [2, 1, 1])
    assert len(tokens) == 3 and tokens[0].shape == (1, 4 * 6, 64)
    assert (
        torch.equal(tokens[0], last[0])
        and torch.equal(tokens[1], first[0])
        and torch.equal(tokens[2], first[0])
    )
    assert not torch.equal(first[0], last[0])
