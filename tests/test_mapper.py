"""Tests of the video window mapper (ov2vss.data.VideoSemSegDatasetMapper), the frame
sampling rules (data/frame_sampling.py), the augmentations (data/augmentation.py) and
data/io.py.

Videos are written to tmp_path in the VSPW layout (data/<video>/origin/<frame>, and
data/<video>/mask/<frame>.png) with pixels that encode the frame index (channel 0 = 10 * i)
and the pixel position, so each test can tell exactly which frame arrived where.
"""

import os
import re
import uuid
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from ov2vss.config import get_ov2vss_cfg
from ov2vss.data import VideoSemSegDatasetMapper
from ov2vss.data.augmentation import WindowColorAugmentation, build_augmentation
from ov2vss.data.frame_sampling import (
    farthest_frame,
    inference_random_frames,
    select_random_frame,
    window_indices,
)
from ov2vss.data.io import FrameSizeError, check_same_size, read_frame, read_mask, relabel

H, W = 16, 24
NUM_CLASSES = 240
IDENTITY_LUT = list(range(NUM_CLASSES)) + [-1] * (255 - NUM_CLASSES) + [255]


def position_frame(i: int) -> np.ndarray:
    """RGB frame: R = 10*i (frame id), G = 8*x, B = 8*y (pixel position)."""
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = 10 * i
    img[..., 1] = 8 * np.arange(W)[None, :]
    img[..., 2] = 8 * np.arange(H)[:, None]
    return img


def position_mask(i: int) -> np.ndarray:
    """Raw label that is unique per (x, y mod 10): enough to detect any crop/flip misalignment."""
    ys, xs = np.mgrid[0:H, 0:W]
    return (xs + 24 * (ys % 10)).astype(np.uint8)


def write_video(
    root,
    name: str,
    num_frames: int,
    frame_fn: Callable[[int], np.ndarray] = position_frame,
    mask_fn: Optional[Callable[[int], np.ndarray]] = position_mask,
    ext: str = ".png",
) -> List[str]:
    """Write a video in VSPW layout; returns the ordered frame paths."""
    origin = os.path.join(str(root), "data", name, "origin")
    mask_dir = os.path.join(str(root), "data", name, "mask")
    os.makedirs(origin, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    paths = []
    for i in range(num_frames):
        path = os.path.join(origin, f"{i:05d}{ext}")
        Image.fromarray(frame_fn(i)).save(path, **({"quality": 100} if ext == ".jpg" else {}))
        if mask_fn is not None:
            Image.fromarray(mask_fn(i)).save(os.path.join(mask_dir, f"{i:05d}.png"))
        paths.append(path)
    return paths


def with_label_map(record: Dict, lut: Sequence[int], num_classes: int) -> Dict:
    """The record as registered datasets have it: ``sem_seg_file_name`` is the label map the
    prepare step writes (raw ids through ``lut``), ``raw_sem_seg_file_name`` the raw mask."""
    raw = record["sem_seg_file_name"]
    labels = relabel(read_mask(raw), lut, raw, num_classes)
    out = raw.replace(os.sep + "mask" + os.sep, os.sep + "labels" + os.sep)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    Image.fromarray(labels.astype(np.uint8)).save(out)
    return dict(record, sem_seg_file_name=out, raw_sem_seg_file_name=raw)


def make_record(frames: List[str], t: int, with_mask: bool = True) -> Dict:
    frame = frames[t]
    mask = frame.replace(os.sep + "origin" + os.sep, os.sep + "mask" + os.sep)
    return {
        "file_name": frame,
        "sem_seg_file_name": os.path.splitext(mask)[0] + ".png" if with_mask else None,
        "video_id": os.path.basename(os.path.dirname(os.path.dirname(frame))),
        "frame_index": t,
        "video_frames": list(frames),
        "height": H,
        "width": W,
    }


def register(
    root, records: List[Dict], label_lut=IDENTITY_LUT, hidden_raw_ids=(), num_classes=NUM_CLASSES
) -> str:
    name = f"test_mapper_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        stuff_classes=[f"class {i}" for i in range(num_classes)],
        label_lut=list(label_lut),
        hidden_raw_ids=list(hidden_raw_ids),
        ignore_label=255,
        evaluator_type="video_sem_seg",
        image_root=os.path.join(str(root), "data"),
        sem_seg_root=os.path.join(str(root), "data"),
    )
    return name


def make_cfg(name: str, **overrides):
    cfg = get_ov2vss_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)  # keep the size: values stay exact
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TEST = H
    cfg.INPUT.MAX_SIZE_TEST = 1000
    cfg.INPUT.CROP.ENABLED = False
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def frame_ids(out) -> List[int]:
    return [int(v) // 10 for v in out["frames"][:, 0, 0, 0]]


def random_id(out) -> int:
    return int(out["random_frame"][0, 0, 0]) // 10


def build(tmp_path, num_frames: int, t: int, is_train: bool = False, **cfg_overrides):
    frames = write_video(tmp_path, "vid", num_frames)
    record = make_record(frames, t)
    name = register(tmp_path, [record])
    mapper = VideoSemSegDatasetMapper(make_cfg(name, **cfg_overrides), is_train=is_train)
    return mapper, record


# ---------------------------------------------------------------- frame choice
@pytest.mark.parametrize(
    "num_frames, t, expected_window, expected_random",
    [
        (20, 12, [3, 6, 9, 12], 0),  # middle; 12 from frame 0, 7 from frame 19
        (20, 2, [0, 0, 0, 2], 19),  # start: references clamped
        (1, 0, [0, 0, 0, 0], 0),  # one-frame video
        (5, 4, [0, 0, 1, 4], 0),
        (9, 4, [0, 0, 1, 4], 0),  # tie (4 frames either way) -> frame 0
        (9, 3, [0, 0, 0, 3], 8),
    ],
)
def test_inference_window_and_random_frame(
    tmp_path, num_frames, t, expected_window, expected_random
):
    mapper, record = build(tmp_path, num_frames, t)
    out = mapper(record)
    assert out["frames"].shape == (4, 3, H, W) and out["frames"].dtype == torch.uint8
    assert out["random_frame"].shape == (3, H, W) and out["random_frame"].dtype == torch.uint8
    assert frame_ids(out) == expected_window
    assert random_id(out) == expected_random
    assert out["sem_seg"].dtype == torch.long and out["sem_seg"].shape == (H, W)
    assert (out["height"], out["width"]) == (H, W)
    assert out["file_name"] == record["file_name"] and out["frame_index"] == t
    assert out["video_id"] == "vid"


def test_jpeg_frames_in_vspw_layout(tmp_path):
    frames = write_video(
        tmp_path, "jpgvid", 12, frame_fn=lambda i: np.full((H, W, 3), 10 * i, np.uint8), ext=".jpg"
    )
    record = make_record(frames, 10)
    mapper = VideoSemSegDatasetMapper(make_cfg(register(tmp_path, [record])), is_train=False)
    out = mapper(record)
    expected = torch.tensor([1, 4, 7, 10], dtype=torch.float32).view(4, 1, 1, 1) * 10
    assert (out["frames"].float() - expected).abs().max() <= 3  # JPEG loss


def test_training_random_frame_outside_window_and_uniform(tmp_path):
    np.random.seed(0)
    mapper, record = build(tmp_path, 20, 12, is_train=True)
    counts = Counter()
    for _ in range(320):
        out = mapper(record)
        assert frame_ids(out) == [3, 6, 9, 12]
        counts[random_id(out)] += 1
    candidates = set(range(20)) - {3, 6, 9, 12}
    assert set(counts) == candidates  # never a window frame, every other frame reachable
    assert min(counts.values()) >= 8 and max(counts.values()) <= 40  # expected 20 each


@pytest.mark.parametrize("num_frames, t, expected", [(1, 0, 0), (2, 1, 0), (2, 0, 1), (4, 3, 0)])
def test_training_random_frame_when_window_covers_video(tmp_path, num_frames, t, expected):
    mapper, record = build(
        tmp_path, num_frames, t, is_train=True, **{"INPUT.TEMPORAL.REFERENCE_OFFSETS": [3, 2, 1]}
    )
    for _ in range(5):
        assert random_id(mapper(record)) == expected


def test_reference_offsets_configurable(tmp_path):
    mapper, record = build(tmp_path, 20, 10, **{"INPUT.TEMPORAL.REFERENCE_OFFSETS": [4, 1]})
    out = mapper(record)
    assert out["frames"].shape[0] == 3
    assert frame_ids(out) == [6, 9, 10]
    assert window_indices(1, 3, [5, -5]) == [0, 2, 1]  # clamped at both ends


def test_random_frame_disabled_repeats_target(tmp_path):
    mapper, record = build(tmp_path, 20, 5, is_train=True, **{"INPUT.TEMPORAL.RANDOM_FRAME": False})
    for _ in range(5):
        assert random_id(mapper(record)) == 5


def test_select_random_frame_rules():
    window = window_indices(12, 20, [9, 6, 3])
    assert window == [3, 6, 9, 12]
    # inference: the farthest frame, no random draw
    state = np.random.get_state()
    assert select_random_frame(12, 20, window, training=False) == farthest_frame(12, 20) == 0
    assert select_random_frame(3, 20, [0, 0, 0, 3], training=False) == 19
    assert select_random_frame(5, 20, window, training=True, enabled=False) == 5
    assert np.array_equal(np.random.get_state()[1], state[1])
    # training: exactly one np.random.randint draw over the frames outside the window
    np.random.seed(7)
    drawn = select_random_frame(12, 20, window, training=True)
    np.random.seed(7)
    candidates = [i for i in range(20) if i not in window]
    assert drawn == candidates[np.random.randint(len(candidates))]
    # the window covers the video: the farthest frame, and no draw
    state = np.random.get_state()
    assert select_random_frame(1, 2, [0, 0, 1], training=True) == 0
    assert np.array_equal(np.random.get_state()[1], state[1])
    # the frames inference can pick (a live stream knows only frame 0)
    assert inference_random_frames(20) == {0, 19} and inference_random_frames(None) == {0}
    assert all(farthest_frame(t, 20) in inference_random_frames(20) for t in range(20))
    with pytest.raises(ValueError, match="outside the video"):
        window_indices(5, 5, [1])


def test_build_augmentation():
    cfg = make_cfg("unused", **{"INPUT.CROP.ENABLED": True, "INPUT.COLOR_AUG_SSD": True})
    train = build_augmentation(cfg, is_train=True)
    assert [type(a) for a in train] == [
        T.ResizeShortestEdge,
        T.RandomCrop,
        T.RandomFlip,
        WindowColorAugmentation,
    ]
    (resize,) = build_augmentation(cfg, is_train=False)
    assert isinstance(resize, T.ResizeShortestEdge) and resize.short_edge_length == (H, H)
    cfg.INPUT.MIN_SIZE_TEST = 0  # detectron2 convention: no resizing
    assert build_augmentation(cfg, is_train=False) == []


def test_bgr_format(tmp_path):
    mapper, record = build(tmp_path, 6, 5, **{"INPUT.FORMAT": "BGR"})
    out = mapper(record)
    # channel 2 (R in BGR) holds the frame id, channel 1 the x position
    assert [int(v) // 10 for v in out["frames"][:, 2, 0, 0]] == [0, 0, 2, 5]
    assert out["frames"][0, 1, 0, 5] == 40


def test_inference_resize_keeps_original_size(tmp_path):
    mapper, record = build(tmp_path, 6, 5, **{"INPUT.MIN_SIZE_TEST": 32})
    out = mapper(record)
    assert out["frames"].shape == (4, 3, 32, 48) and out["random_frame"].shape == (3, 32, 48)
    assert out["sem_seg"].shape == (32, 48)
    assert (out["height"], out["width"]) == (H, W)


# ---------------------------------------------------------------- augmentation
def test_geometric_augmentation_shared_by_window_and_label(tmp_path):
    np.random.seed(1)
    mapper, record = build(
        tmp_path,
        20,
        12,
        is_train=True,
        **{"INPUT.CROP.ENABLED": True, "INPUT.CROP.TYPE": "absolute", "INPUT.CROP.SIZE": (12, 12)},
    )
    flipped, offsets = 0, set()
    for _ in range(12):
        out = mapper(record)
        frames = out["frames"].long()
        assert frames.shape == (4, 3, 12, 12)
        # every window frame and the random frame show the same pixels (position channels) ...
        for img in list(frames) + [out["random_frame"].long()]:
            assert torch.equal(img[1:], frames[-1, 1:])
        # ... and each keeps its identity
        assert frame_ids(out) == [3, 6, 9, 12]
        # the label is cropped/flipped with the target frame: recompute it from the positions
        xs, ys = frames[-1, 1] // 8, frames[-1, 2] // 8
        assert torch.equal(out["sem_seg"], xs + 24 * (ys % 10))
        flipped += int(xs[0, 0] > xs[0, -1])
        offsets.add((int(xs.min()), int(ys.min())))
    assert 0 < flipped < 12 and len(offsets) > 1  # the augmentation really was random


def test_photometric_augmentation_identical_for_all_frames(tmp_path):
    rng = np.random.RandomState(0)
    base = rng.randint(90, 131, size=(H, W, 3)).astype(np.uint8)
    frames = write_video(tmp_path, "color", 9, frame_fn=lambda i: base + np.uint8(2 * i))
    record = make_record(frames, 8)
    name = register(tmp_path, [record])
    np.random.seed(3)
    plain = VideoSemSegDatasetMapper(make_cfg(name), is_train=True)
    color = VideoSemSegDatasetMapper(make_cfg(name, **{"INPUT.COLOR_AUG_SSD": True}), is_train=True)
    changed = 0
    for _ in range(6):
        out = color(record)
        frames_out = out["frames"].long()
        target = frames_out[-1]
        for img in list(frames_out[:-1]) + [out["random_frame"].long()]:
            diff = img - target
            assert (
                diff.max() - diff.min() <= 2
            )  # same pixel-wise map: constant difference (+-rounding)
        reference = plain(record)["frames"].long()[-1]
        # compare up to the flip, which both mappers draw independently
        changed += int(
            min((target - reference).abs().max(), (target - reference.flip(-1)).abs().max()) > 3
        )
    assert changed > 0


# ---------------------------------------------------------------- labels
def test_label_map_is_the_label(tmp_path):
    """The mapper reads the prepared label map as it is (no second relabelling)."""
    lut = [-1] * 256
    lut[1], lut[2], lut[3], lut[0] = 0, 255, 1, 255
    frames = write_video(
        tmp_path, "lut", 3, mask_fn=lambda i: np.tile(np.array([0, 1, 2, 3], np.uint8), (H, W // 4))
    )
    record = with_label_map(make_record(frames, 2), lut, 2)
    mapper = VideoSemSegDatasetMapper(
        make_cfg(register(tmp_path, [record], label_lut=lut, num_classes=2)), is_train=False
    )
    sem_seg = mapper(record)["sem_seg"]
    assert sem_seg[0, :4].tolist() == [255, 0, 255, 1]
    assert torch.equal(sem_seg, torch.tensor([255, 0, 255, 1]).repeat(H, W // 4))


def test_relabel_function_errors_name_values_and_file():
    lut = [-1] * 256
    lut[1] = 0
    with pytest.raises(ValueError, match=r"m\.png.*\[7, 9\]"):
        relabel(np.array([[1, 7], [9, 1]], np.uint8), lut, "m.png")
    lut[7] = lut[9] = 3
    with pytest.raises(ValueError, match=r"m\.png.*\[3\]"):
        relabel(np.array([[1, 7], [9, 1]], np.uint8), lut, "m.png", num_classes=2)
    assert relabel(np.array([[1, 7]], np.uint8), lut, "m.png", num_classes=4).tolist() == [[0, 3]]


def test_mask_unseen_pixels(tmp_path):
    def mask_fn(i):  # raw 3 (hidden class) in the top 4 rows, raw 1 elsewhere
        m = np.ones((H, W), np.uint8)
        m[:4] = 3
        return m

    lut = [-1] * 256
    lut[1], lut[3] = 0, 255
    frames = write_video(
        tmp_path,
        "hide",
        20,
        frame_fn=lambda i: np.full((H, W, 3), 10 * i, np.uint8),
        mask_fn=mask_fn,
    )
    os.remove(
        os.path.join(str(tmp_path), "data", "hide", "mask", "00006.png")
    )  # an unannotated frame
    record = with_label_map(make_record(frames, 12), lut, 1)
    name = register(tmp_path, [record], label_lut=lut, hidden_raw_ids=[3], num_classes=1)
    mean = [50.2, 60.7, 70.0]
    cfg = make_cfg(name, **{"INPUT.MASK_UNSEEN_PIXELS": True, "MODEL.PIXEL_MEAN": mean})
    out = VideoSemSegDatasetMapper(cfg, is_train=True)(record)
    fill = torch.tensor([50, 61, 70], dtype=torch.uint8).view(3, 1, 1)
    window = [3, 6, 9, 12]
    for k, idx in enumerate(window):
        img = out["frames"][k]
        assert (img[:, 4:] == 10 * idx).all()  # visible pixels untouched
        if idx == 6:  # no mask file: left as it is
            assert (img[:, :4] == 10 * idx).all()
        else:
            assert (img[:, :4] == fill).all()
    assert (out["random_frame"][:, :4] == fill).all()
    assert (out["sem_seg"][:4] == 255).all() and (out["sem_seg"][4:] == 0).all()
    # off (and never at inference): frames untouched
    cfg.INPUT.MASK_UNSEEN_PIXELS = False
    plain = VideoSemSegDatasetMapper(cfg, is_train=True)(record)
    assert (
        frame_ids(plain) == window
        and (plain["frames"][:, 0] == torch.tensor(window).view(4, 1, 1) * 10).all()
    )


def test_unlabelled_record(tmp_path):
    frames = write_video(tmp_path, "nolabel", 5, mask_fn=None)
    record = make_record(frames, 4, with_mask=False)
    name = register(tmp_path, [record])
    out = VideoSemSegDatasetMapper(make_cfg(name), is_train=False)(record)
    assert "sem_seg" not in out and frame_ids(out) == [0, 0, 1, 4]
    with pytest.raises(ValueError, match="no sem_seg_file_name"):
        VideoSemSegDatasetMapper(make_cfg(name), is_train=True)(record)


def test_dataset_name_selects_metadata(tmp_path):
    """The inference mapper takes the class count of DATASETS.TEST[0] unless told another
    dataset: labels outside that count are refused."""
    frames = write_video(tmp_path, "names", 4)
    record = with_label_map(make_record(frames, 3), IDENTITY_LUT, NUM_CLASSES)
    train_name = register(tmp_path, [record])
    test_name = register(tmp_path, [record], num_classes=1)
    cfg = make_cfg(train_name)
    cfg.DATASETS.TEST = (test_name,)
    with pytest.raises(ValueError, match="outside"):
        VideoSemSegDatasetMapper(cfg, is_train=False)(record)
    explicit = VideoSemSegDatasetMapper(cfg, is_train=False, dataset_name=train_name)(record)[
        "sem_seg"
    ]
    assert explicit.max() > 0


# ---------------------------------------------------------------- bad input
def test_missing_frame_file(tmp_path):
    mapper, record = build(tmp_path, 20, 12)
    missing = record["video_frames"][6]
    os.remove(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        mapper(record)


def test_corrupt_jpeg(tmp_path):
    mapper, record = build(tmp_path, 20, 12)
    bad = os.path.join(str(tmp_path), "data", "vid", "origin", "garbage.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg" * 4)
    record["video_frames"][9] = bad
    with pytest.raises(ValueError, match=re.escape(bad)):
        mapper(record)
    # a truncated real JPEG is also reported
    Image.fromarray(position_frame(1)).save(bad, quality=90)
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(f"cannot read frame {bad}")):
        read_frame(bad, "RGB")


def test_mask_of_different_size(tmp_path):
    mapper, record = build(tmp_path, 20, 12)
    Image.fromarray(np.zeros((H + 2, W, 1), np.uint8)[..., 0]).save(record["sem_seg_file_name"])
    with pytest.raises(
        ValueError, match=re.escape(record["sem_seg_file_name"]) + rf".*{W}x{H + 2}.*{W}x{H}"
    ):
        mapper(record)


def test_window_frames_of_different_size(tmp_path):
    mapper, record = build(tmp_path, 20, 12)
    odd = record["video_frames"][3]
    Image.fromarray(np.zeros((H, W + 4, 3), np.uint8)).save(odd)
    with pytest.raises(ValueError, match=re.escape(odd)):
        mapper(record)
    with pytest.raises(FrameSizeError, match="all frames of a video must have the same size"):
        mapper(record)


def test_check_same_size_messages():
    check_same_size(np.zeros((4, 6)), "a.png", (4, 6, 3), "b.png", "mask")
    with pytest.raises(
        FrameSizeError, match=r"^mask a\.png has size 6x5 \(WxH\) but b\.png has size 6x4$"
    ):
        check_same_size(np.zeros((5, 6)), "a.png", (4, 6, 3), "b.png", "mask")
    with pytest.raises(
        FrameSizeError,
        match=r"^frame 3 of v\.mp4 has size 6x5 \(WxH\) but frame 0 has size 6x4: all frames of "
        r"a video must have the same size$",
    ):
        check_same_size((5, 6), "3 of v.mp4", np.zeros((4, 6, 3)), "frame 0")


def test_label_values_outside_class_range(tmp_path):
    frames = write_video(tmp_path, "range", 3, mask_fn=lambda i: np.full((H, W), 250, np.uint8))
    record = make_record(frames, 2)
    mapper = VideoSemSegDatasetMapper(make_cfg(register(tmp_path, [record])), is_train=False)
    with pytest.raises(ValueError, match=re.escape(record["sem_seg_file_name"]) + r".*\[250\]"):
        mapper(record)


def test_read_mask_rejects_multichannel(tmp_path):
    path = str(tmp_path / "rgb_mask.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match="rgb_mask.png"):
        read_mask(path)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_mask(str(tmp_path / "nope.png"))


def test_inconsistent_record(tmp_path):
    mapper, record = build(tmp_path, 5, 3)
    record["frame_index"] = 2
    with pytest.raises(ValueError, match="video_frames"):
        mapper(record)
    record["frame_index"] = 7
    with pytest.raises(ValueError, match="outside"):
        mapper(record)


def test_frame_mask_path_rules(tmp_path):
    mapper, record = build(tmp_path, 4, 3)
    root = os.path.join(str(tmp_path), "data")
    # VSPW: a neighbour of the target lies in origin/, its mask in mask/ (rule of the record)
    assert mapper.frame_mask_path(record["video_frames"][1], record) == os.path.join(
        root, "vid", "mask", "00001.png"
    )
    assert mapper.frame_mask_path(record["file_name"], record) == record["sem_seg_file_name"]
    # elsewhere: image_root -> sem_seg_root, extension .png (rule of the metadata)
    other = os.path.join(root, "other", "f.jpg")
    assert mapper.frame_mask_path(other, record) == os.path.join(root, "other", "f.png")
    assert mapper.frame_mask_path(os.path.join(str(tmp_path), "outside.jpg"), record) is None
