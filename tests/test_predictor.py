"""VideoPredictor (streaming inference) against window-by-window inference (mapper + forward)."""

import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from ov2vss import VideoSemSegDatasetMapper
from ov2vss.checkpoint import load_model_weights
from ov2vss.checkpoint_io import CheckpointError
from ov2vss.data.io import FrameSizeError
from ov2vss.predictor import VideoPredictor

VOCAB = ["red circle", "blue star", "green square", "yellow cross"]
NUM_FRAMES = 20


@pytest.fixture(scope="module")
def cfg_of(tiny_cfg):
    """``cfg_of(*opts)``: the tiny config for 64x96 frames; the test size 48 makes both paths
    resize (and upsample the output)."""
    return lambda *opts: tiny_cfg(
        "INPUT.MIN_SIZE_TEST", 48, "MODEL.OV2VSS.TEST_VOCABULARY", VOCAB, *opts
    )


def make_video(num_frames, seed=0):
    """A moving textured scene: consecutive frames differ, so every window member matters."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (64, 160, 3), dtype=np.uint8)
    frames = []
    for i in range(num_frames):
        frame = base[:, 3 * i : 3 * i + 96].copy()
        frame[: 4 + i] = (17 * i) % 256  # a growing band: frames are not shifted copies
        frames.append(frame)
    return frames


def write_frames(frames, folder):
    paths = []
    for i, frame in enumerate(frames):
        path = os.path.join(folder, f"{i:05d}.png")
        Image.fromarray(frame).save(path)
        paths.append(path)
    return paths


def window_inputs(cfg, paths):
    """What the test loader feeds the model: the inference mapper built from the config."""
    mapper = VideoSemSegDatasetMapper(cfg, False, dataset_name="vspw_toy_val_all")
    h, w = np.asarray(Image.open(paths[0])).shape[:2]
    return [
        mapper(
            {
                "file_name": p,
                "video_frames": paths,
                "frame_index": i,
                "height": h,
                "width": w,
                "video_id": "v",
            }
        )
        for i, p in enumerate(paths)
    ]


def window_by_window(model, inputs):
    with torch.no_grad():
        return [model([x])[0]["sem_seg"] for x in inputs]


def build(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # make the zero-initialised VTE residuals matter
        for p in model.vte.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def video(tmp_path_factory, cfg_of):
    cfg = cfg_of()
    model = build(cfg)
    frames = make_video(NUM_FRAMES)
    paths = write_frames(frames, str(tmp_path_factory.mktemp("video")))
    inputs = window_inputs(cfg, paths)
    return cfg, model, frames, inputs, window_by_window(model, inputs)


class EncoderPasses:
    """Batch sizes of every pass of the backbone, of CLIP's image tower (its patch embedding)
    and of CLIP's text tower while counting; ``remove()`` stops counting."""

    def __init__(self, model):
        clip = model.clip.model
        self.backbone: list = []
        self.clip_image: list = []
        self.clip_text: list = []
        self.handles = [
            module.register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(len(args[0])))
            for module, seen in (
                (model.backbone, self.backbone),
                (clip.visual.conv1, self.clip_image),
                (clip.transformer, self.clip_text),
            )
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_streaming_equals_window_by_window_and_encodes_each_frame_once(video):
    cfg, model, frames, _, expected = video
    predictor = VideoPredictor(cfg, model=model)
    model.clip._text_cache.clear()  # the vocabulary was encoded by the window-by-window run
    passes = EncoderPasses(model)
    cache_sizes, outputs = [], []
    try:
        predictor.reset(len(frames), frames[-1])
        for frame in frames:
            outputs.append(predictor.push(frame)["sem_seg"])
            cache_sizes.append(len(predictor.cached_frames))
    finally:
        passes.remove()
    assert len(outputs) == NUM_FRAMES
    for t, (out, ref) in enumerate(zip(outputs, expected)):
        assert out.shape == ref.shape == (len(VOCAB), 64, 96)
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=0, msg=f"frame {t}")
    # one backbone and one CLIP image pass per frame (the last one up front, as the random
    # frame); the vocabulary once, for the whole video
    assert passes.backbone == passes.clip_image == [1] * NUM_FRAMES
    assert passes.clip_text == [len(VOCAB)]
    # the cache holds the reach of the offsets (9 frames) plus the pinned last frame at most
    assert max(cache_sizes) <= max(cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS) + 1
    assert cache_sizes[-1] == 0
    # the predictions are not constant: the comparison above is meaningful
    assert (expected[0] - expected[-1]).abs().max() > 1e-3


def test_iterator_with_known_length_matches_sequence(video):
    cfg, model, frames, _, expected = video
    predictor = VideoPredictor(cfg, model=model)
    outs = [
        o["sem_seg"] for o in predictor.run(iter(frames[:12]), num_frames=12, last_frame=frames[11])
    ]
    seq = [o["sem_seg"] for o in predictor.run(frames[:12])]
    assert len(outs) == 12
    for a, b in zip(outs, seq):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="last frame"):
        predictor.reset(12)
    with pytest.raises(ValueError, match="differs from the last_frame"):
        predictor.reset(3, frames[2])
        predictor.push(frames[0])
        predictor.push(frames[1])
        predictor.push(frames[5])


def test_live_stream_uses_frame_zero_as_random_frame(video):
    cfg, model, frames, inputs, expected = video
    predictor = VideoPredictor(cfg, model=model)
    stream = [o["sem_seg"] for o in predictor.run(iter(frames))]  # length unknown
    # reference: window-by-window inference with the random frame replaced by frame 0
    frame0 = inputs[0]["frames"][-1]
    as_stream = [dict(x, random_frame=frame0) for x in inputs]
    reference = window_by_window(model, as_stream)
    for t in range(NUM_FRAMES):
        torch.testing.assert_close(stream[t], reference[t], atol=2e-6, rtol=0, msg=f"frame {t}")
    # the first half differs from the known-length result (its random frame is the last one),
    # the second half is identical (its random frame is frame 0 either way)
    first_half = max((stream[t] - expected[t]).abs().max().item() for t in range(NUM_FRAMES // 2))
    assert first_half > 2e-5
    for t in range(NUM_FRAMES // 2, NUM_FRAMES):
        torch.testing.assert_close(stream[t], expected[t], atol=2e-6, rtol=0)


def test_streaming_equals_window_by_window_other_window_layouts(tmp_path, cfg_of):
    """STCF off, VTE on the target only, no random frame, other offsets: the cache rules
    follow the model's needs."""
    cfg = cfg_of(
        "INPUT.TEMPORAL.REFERENCE_OFFSETS", [4, 2],
        "INPUT.TEMPORAL.RANDOM_FRAME", False,
        "MODEL.OV2VSS.STCF.ENABLED", False,
        "MODEL.OV2VSS.VTE.CLIP_FRAMES", "target",
    )  # fmt: skip
    model = build(cfg)
    frames = make_video(7, seed=1)
    expected = window_by_window(model, window_inputs(cfg, write_frames(frames, str(tmp_path))))
    predictor = VideoPredictor(cfg, model=model)
    passes = EncoderPasses(model)
    try:
        outputs = [o["sem_seg"] for o in predictor.run(frames)]
    finally:
        passes.remove()
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)
    assert passes.backbone == passes.clip_image == [1] * 7
    assert passes.clip_text == []  # encoded by the window-by-window run above, cached
    # nothing of a past frame is needed without STCF / multi-frame VTE
    predictor.reset(None)
    predictor.push(frames[0])
    predictor.push(frames[1])
    assert predictor.cached_frames == []


def test_random_frame_follows_the_mapper_rule(video):
    from ov2vss.data.frame_sampling import farthest_frame

    cfg, model, frames, _, _ = video
    predictor = VideoPredictor(cfg, model=model)
    predictor.reset(NUM_FRAMES, frames[-1])
    assert [predictor.random_frame_index(t) for t in range(NUM_FRAMES)] == [
        farthest_frame(t, NUM_FRAMES) for t in range(NUM_FRAMES)
    ]
    predictor.reset(None)  # live stream: the farthest frame seen so far
    assert [predictor.random_frame_index(t) for t in range(NUM_FRAMES)] == [0] * NUM_FRAMES


def test_frame_size_change_is_reported(video):
    cfg, model, frames, _, _ = video
    predictor = VideoPredictor(cfg, model=model)
    predictor.reset(None)
    predictor.push(frames[0])
    with pytest.raises(
        FrameSizeError, match=r"frame 1 has size 80x64 \(WxH\) but frame 0 has size 96x64"
    ):
        predictor.push(np.zeros((64, 80, 3), np.uint8))
    with pytest.raises(ValueError, match="HxWx3"):
        VideoPredictor(cfg, model=model).push(np.zeros((64, 80), np.uint8))


def test_weights_loading(video, tmp_path, cfg_of):
    cfg, model, frames, _, expected = video
    with pytest.raises(
        FileNotFoundError, match="MODEL.WEIGHTS: checkpoint file .*missing.pth does not exist"
    ):
        load_model_weights(model, cfg_of("MODEL.WEIGHTS", str(tmp_path / "missing.pth")))
    message = load_model_weights(model, cfg_of())
    assert "randomly initialised" in message and "CLIP included" in message
    # a checkpoint of the model, loaded into a fresh one by VideoPredictor(cfg), predicts the same
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    torch.manual_seed(123)
    predictor = VideoPredictor(cfg_of("MODEL.WEIGHTS", str(path)))
    assert predictor.weights_warning is None
    # a backbone-only checkpoint (e.g. ImageNet weights) would leave the OV2VSS modules random:
    # inference refuses it, naming the file and what it lacks
    partial = tmp_path / "backbone.pth"
    torch.save(
        {"model": {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}},
        partial,
    )
    n = sum(not k.startswith("backbone.") for k in model.state_dict())
    pattern = rf"{partial} does not match the model: {n} tensors differ: {n} missing from the file"
    with pytest.raises(CheckpointError, match=pattern):
        load_model_weights(model, cfg_of("MODEL.WEIGHTS", str(partial)))
    out = [o["sem_seg"] for o in predictor.run(frames[:3])]
    ref = [o["sem_seg"] for o in VideoPredictor(cfg, model=model).run(frames[:3])]
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
