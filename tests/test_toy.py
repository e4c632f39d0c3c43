"""The embedded toy dataset: class design, generated layout, registration, label/frame agreement."""

import collections
import filecmp
import glob
import json
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import ov2vss  # noqa: F401  (registers the datasets)
from ov2vss.data.datasets.register_vspw_toy import (
    TOY_CLASS_NAMES,
    TOY_COLORS,
    TOY_NUM_SEEN,
    TOY_SHAPES,
    default_toy_root,
    register_toy,
)
from ov2vss.data.toy import TOY_MARKER, generate_toy_dataset, main, toy_class_color
from ov2vss.data.vspw_classes import parse_label_num_dic

SMALL = dict(num_train_videos=2, num_val_videos=3, frames_per_video=(3, 4), image_size=(48, 64))


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toy") / "VSPW_toy")
    generate_toy_dataset(root, seed=0)  # the default dataset (what `make demo` uses)
    return root


@pytest.fixture
def registered_toy(toy_root):
    names = register_toy(toy_root)
    yield names
    register_toy()  # back to the default root for other tests


def _masks(root, split):
    with open(os.path.join(root, f"{split}.txt")) as f:
        videos = f.read().split()
    return {
        v: [
            cv2.imread(p, cv2.IMREAD_UNCHANGED)
            for p in sorted(glob.glob(os.path.join(root, "data", v, "mask", "*.png")))
        ]
        for v in videos
    }


def test_class_composition():
    seen, unseen = TOY_CLASS_NAMES[:TOY_NUM_SEEN], TOY_CLASS_NAMES[TOY_NUM_SEEN:]
    assert (
        len(TOY_CLASS_NAMES) == len(set(TOY_CLASS_NAMES)) == len(TOY_COLORS) * len(TOY_SHAPES) == 36
    )
    assert (len(seen), len(unseen)) == (28, 8)
    colours = collections.Counter(n.split(" ")[0] for n in unseen)
    shapes = collections.Counter(n.split(" ")[1] for n in unseen)
    # neither word alone identifies an unseen class ...
    assert min(colours.values()) >= 2 and min(shapes.values()) >= 2
    # ... and each of them is also learnt from seen classes
    assert all(any(s.startswith(c + " ") for s in seen) for c in colours)
    assert all(any(s.endswith(" " + sh) for s in seen) for sh in shapes)
    rgb = np.array(list(TOY_COLORS.values()), float)
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert distances[~np.eye(len(rgb), dtype=bool)].min() > 100


def test_layout(toy_root):
    with open(os.path.join(toy_root, "train.txt")) as f:
        train = f.read().split()
    with open(os.path.join(toy_root, "val.txt")) as f:
        val = f.read().split()
    assert (len(train), len(val)) == (24, 8) and not os.path.exists(
        os.path.join(toy_root, "test.txt")
    )
    for video in train + val:
        frames = sorted(os.listdir(os.path.join(toy_root, "data", video, "origin")))
        masks = sorted(os.listdir(os.path.join(toy_root, "data", video, "mask")))
        assert 14 <= len(frames) <= 20
        assert frames == [f"{i:05d}.jpg" for i in range(len(frames))]
        assert masks == [f.replace(".jpg", ".png") for f in frames]
    frame = cv2.imread(os.path.join(toy_root, "data", val[0], "origin", "00000.jpg"))
    assert frame.shape == (96, 160, 3)
    assert (
        parse_label_num_dic(os.path.join(toy_root, "label_num_dic_final.json")) == TOY_CLASS_NAMES
    )


def test_registration(registered_toy, toy_root):
    assert registered_toy == [
        "vspw_toy_train_seen",
        "vspw_toy_val_unseen",
        "vspw_toy_val_seen",
        "vspw_toy_val_all",
    ]
    val = DatasetCatalog.get("vspw_toy_val_all")
    num_val_frames = sum(len(m) for m in _masks(toy_root, "val").values())
    assert len(val) == num_val_frames
    assert val[0]["file_name"].startswith(toy_root) and (val[0]["height"], val[0]["width"]) == (
        96,
        160,
    )
    assert val[3]["frame_index"] == 3 and val[3]["file_name"] == val[3]["video_frames"][3]
    video = val[3]["video_id"]
    assert val[3]["raw_sem_seg_file_name"] == os.path.join(
        toy_root, "data", video, "mask", "00003.png"
    )
    assert val[3]["sem_seg_file_name"] == os.path.join(
        toy_root, "annotations_detectron2", "all", video, "00003.png"
    )
    unseen = MetadataCatalog.get("vspw_toy_val_unseen")
    assert unseen.stuff_classes == unseen.class_texts == TOY_CLASS_NAMES[28:]
    assert [unseen.label_lut[r] for r in (0, 1, 28, 29, 36, 37, 255)] == [
        255,
        255,
        255,
        0,
        7,
        -1,
        255,
    ]
    train = MetadataCatalog.get("vspw_toy_train_seen")
    assert train.stuff_classes == TOY_CLASS_NAMES[:28] and train.hidden_raw_ids == list(
        range(29, 37)
    )
    assert [train.label_lut[r] for r in (1, 28, 29)] == [0, 27, 255]
    assert MetadataCatalog.get("vspw_toy_val_all").unseen_classes == list(range(28, 36))
    assert train.dataset_root == toy_root


def test_label_maps(registered_toy, toy_root):
    """Every protocol's records point at label maps that equal the raw masks relabelled
    through the protocol's label_lut (the same labels the mapper and evaluator use)."""
    spaces = {"vspw_toy_train_seen": "seen", "vspw_toy_val_seen": "seen"}
    spaces.update({"vspw_toy_val_unseen": "unseen", "vspw_toy_val_all": "all"})
    for name, space in spaces.items():
        lut = np.asarray(MetadataCatalog.get(name).label_lut)
        records = DatasetCatalog.get(name)
        for r in records[:: max(1, len(records) // 10)]:
            assert os.path.dirname(r["sem_seg_file_name"]) == os.path.join(
                toy_root, "annotations_detectron2", space, r["video_id"]
            )
            labels = cv2.imread(r["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
            raw = cv2.imread(r["raw_sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
            assert labels.dtype == np.uint8 and np.array_equal(labels, lut[raw])
    listed = sorted(os.listdir(os.path.join(toy_root, "annotations_detectron2")))
    assert listed == ["all", "seen", "unseen"]
    assert sorted(os.listdir(os.path.join(toy_root, "annotations_detectron2", "unseen"))) == [
        f"val_{i:03d}" for i in range(8)
    ]  # training videos only need the seen space


def test_project_mapper_reads_the_label_maps(registered_toy):
    """The video mapper's label is the label map as stored; INPUT.MASK_UNSEEN_PIXELS hides the
    pixels whose *raw* id is unseen (the label map has 255 there, as for "others")."""
    from ov2vss.data.video_mapper import VideoSemSegDatasetMapper

    hidden = list(range(TOY_NUM_SEEN + 1, len(TOY_CLASS_NAMES) + 1))
    mapper = VideoSemSegDatasetMapper(
        is_train=True,
        augmentations=[],
        image_format="RGB",
        num_classes=TOY_NUM_SEEN,
        mask_unseen_pixels=True,
        hidden_raw_ids=hidden,
        pixel_mean=(1.0, 2.0, 3.0),
    )
    checked = 0
    for record in DatasetCatalog.get("vspw_toy_val_seen")[::5]:
        out = mapper(record)
        labels = cv2.imread(record["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
        raw = cv2.imread(record["raw_sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
        assert np.array_equal(out["sem_seg"].numpy(), labels)
        unseen = np.isin(raw, hidden)
        target = out["frames"][-1].permute(1, 2, 0).numpy()
        assert (target[unseen] == [1, 2, 3]).all()
        assert not (target[~unseen] == [1, 2, 3]).all(axis=-1).any()
        checked += int(unseen.any())
    assert checked > 0


def test_register_toy_default_root(monkeypatch, tmp_path):
    """Without a root, the toy names point at $DETECTRON2_DATASETS/VSPW_toy, read when
    register_toy is called (conftest points them back where they were afterwards)."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    root = str(tmp_path / "VSPW_toy")
    assert default_toy_root() == root
    names = register_toy()
    assert len(names) == 4 and all(MetadataCatalog.get(n).dataset_root == root for n in names)
    # nothing there yet: the records are listed lazily and the error says how to make them
    with pytest.raises(
        FileNotFoundError, match=f"dataset root {root} does not exist.*--root {root}"
    ):
        DatasetCatalog.get("vspw_toy_val_seen")


def test_class_coverage(toy_root):
    val = _masks(toy_root, "val")
    seen_ids, unseen_ids = set(range(1, 29)), set(range(29, 37))
    for video, masks in val.items():
        present = set(np.unique(np.stack(masks)).tolist())
        assert present & seen_ids and present & unseen_ids, video  # both kinds in every val video
    val_present = set(
        np.unique(np.concatenate([np.stack(m).ravel() for m in val.values()])).tolist()
    )
    assert unseen_ids <= val_present
    train_present = set(
        np.unique(
            np.concatenate([np.stack(m).ravel() for m in _masks(toy_root, "train").values()])
        ).tolist()
    )
    assert seen_ids <= train_present
    assert train_present <= seen_ids | unseen_ids | {0}


def test_masks_match_frames(toy_root):
    """Pixels labelled '<colour> <shape>' show that colour; objects move between frames."""
    kernel = np.ones((3, 3), np.uint8)
    palette = {n: np.array(c, float) for n, c in TOY_COLORS.items()}
    checked = set()
    for video in ("val_000", "val_001", "val_002", "val_003", "train_000", "train_001"):
        for t in (0, 7):
            frame = cv2.imread(os.path.join(toy_root, "data", video, "origin", f"{t:05d}.jpg"))[
                ..., ::-1
            ].astype(float)
            mask = cv2.imread(
                os.path.join(toy_root, "data", video, "mask", f"{t:05d}.png"), cv2.IMREAD_UNCHANGED
            )
            background = cv2.erode((mask == 0).astype(np.uint8), kernel) > 0
            assert frame[background].std(axis=1).mean() < 15  # the background is grey
            for raw in set(np.unique(mask).tolist()) - {0}:
                inner = cv2.erode((mask == raw).astype(np.uint8), kernel) > 0
                if inner.sum() < 10:
                    continue
                name = TOY_CLASS_NAMES[raw - 1]
                mean = frame[inner].mean(axis=0)
                nearest = min(palette, key=lambda c: np.linalg.norm(palette[c] - mean))
                assert nearest == name.split(" ")[0], (video, t, name, mean)
                assert np.linalg.norm(mean - np.array(toy_class_color(name))) < 30
                checked.add(raw)
        first, later = (
            cv2.imread(
                os.path.join(toy_root, "data", video, "mask", f"{t:05d}.png"), cv2.IMREAD_UNCHANGED
            )
            for t in (0, 7)
        )
        assert (first != later).mean() > 0.01
    assert len(checked) >= 10


def test_deterministic_and_idempotent(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    generate_toy_dataset(a, seed=3, **SMALL)
    generate_toy_dataset(b, seed=3, **SMALL)
    generate_toy_dataset(c, seed=4, **SMALL)
    files = sorted(
        os.path.relpath(p, a) for p in glob.glob(os.path.join(a, "**", "*.*"), recursive=True)
    )
    assert files == sorted(
        os.path.relpath(p, b) for p in glob.glob(os.path.join(b, "**", "*.*"), recursive=True)
    )
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors and len(match) == len(files)
    masks = [f for f in files if f.endswith(".png")]
    assert filecmp.cmpfiles(a, c, masks, shallow=False)[1]  # another seed, other masks

    marker = os.path.join(a, TOY_MARKER)
    stamp = os.stat(marker).st_mtime_ns
    generate_toy_dataset(a, seed=3, **SMALL)  # same parameters: nothing rewritten
    assert os.stat(marker).st_mtime_ns == stamp
    generate_toy_dataset(
        a, seed=3, **dict(SMALL, num_train_videos=3)
    )  # new parameters: regenerated
    with open(os.path.join(a, "train.txt")) as f:
        assert f.read().split() == ["train_000", "train_001", "train_002"]
    with open(marker) as f:
        assert json.load(f)["num_train_videos"] == 3
    assert not glob.glob(str(tmp_path / "*.tmp-*"))


def test_refuses_foreign_directory_and_bad_parameters(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        generate_toy_dataset(str(foreign), **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="unseen classes"):
        generate_toy_dataset(str(tmp_path / "x"), **dict(SMALL, num_val_videos=1))
    with pytest.raises(ValueError, match="frames_per_video"):
        generate_toy_dataset(str(tmp_path / "x"), **dict(SMALL, frames_per_video=(5, 2)))


def test_cli(tmp_path, capsys):
    root = str(tmp_path / "cli")
    main(
        [
            "--root",
            root,
            "--num-train-videos",
            "2",
            "--num-val-videos",
            "3",
            "--frames-per-video",
            "2",
            "2",
            "--image-size",
            "48",
            "64",
        ]
    )
    assert "toy dataset ready" in capsys.readouterr().out
    with open(os.path.join(root, TOY_MARKER)) as f:
        params = json.load(f)
    assert (params["num_val_videos"], params["frames_per_video"], params["image_size"]) == (
        3,
        [2, 2],
        [48, 64],
    )
    assert len(os.listdir(os.path.join(root, "data", "val_002", "origin"))) == 2
