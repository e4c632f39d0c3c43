"""Dataset registration: VSPW layout, Cityscapes video layout, metadata, errors, prepare scripts."""

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import ov2vss  # noqa: F401  (registers the datasets)
from ov2vss.data.datasets.register_cityscapes_video import (
    CITYSCAPES_CLASS_NAMES,
    load_cityscapes_video,
    register_cityscapes_video,
)
from ov2vss.data.datasets.register_vspw import VideoFrameList, load_vspw_split, register_vspw_family
from ov2vss.data.vspw_classes import get_vspw_class_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image(path, height, width, value=0, mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _vspw_tree(root, videos, splits):
    """videos: {name: (height, width, frame stems, annotated stems)}; splits: {split: [names]}."""
    for name, (h, w, frames, annotated) in videos.items():
        for stem in frames:
            _image(os.path.join(root, "data", name, "origin", f"{stem}.jpg"), h, w, 100)
        os.makedirs(os.path.join(root, "data", name, "mask"), exist_ok=True)
        for stem in annotated:
            _image(os.path.join(root, "data", name, "mask", f"{stem}.png"), h, w, 81, mode="L")
    for split, names in splits.items():
        _write(os.path.join(root, f"{split}.txt"), "\n".join(names) + "\n")
    return str(root)


@pytest.fixture
def vspw_root(tmp_path):
    videos = {
        "vid_a": (
            24,
            40,
            ["00000000", "00000003", "00000006", "00000009"],
            ["00000003", "00000009"],
        ),
        # un-padded names: the frame order must be numeric (9 before 10)
        "vid_b": (16, 32, ["9", "10", "11"], ["9", "10", "11"]),
    }
    return _vspw_tree(
        tmp_path / "VSPW_480p", videos, {"train": ["vid_a"], "val": ["vid_a", "vid_b"]}
    )


def _register(root, **kwargs):
    prefix = f"test_vspw_{uuid.uuid4().hex[:8]}"
    names = register_vspw_family(
        prefix, root, get_vspw_class_names(), 80, splits=("train", "val"), **kwargs
    )
    return prefix, names


def test_vspw_records(vspw_root):
    prefix, names = _register(vspw_root)
    assert names == [
        f"{prefix}_train_seen",
        f"{prefix}_val_unseen",
        f"{prefix}_val_seen",
        f"{prefix}_val_all",
    ]
    train = DatasetCatalog.get(f"{prefix}_train_seen")
    assert [r["frame_index"] for r in train] == [1, 3]
    a = os.path.join(vspw_root, "data", "vid_a")
    assert train[0]["file_name"] == os.path.join(a, "origin", "00000003.jpg")
    assert train[0]["sem_seg_file_name"] == os.path.join(a, "mask", "00000003.png")
    assert train[1]["video_frames"] == [
        os.path.join(a, "origin", f"0000000{i}.jpg") for i in (0, 3, 6, 9)
    ]
    assert (train[0]["height"], train[0]["width"], train[0]["video_id"]) == (24, 40, "vid_a")

    val = DatasetCatalog.get(f"{prefix}_val_all")
    assert len(val) == 5
    b = [r for r in val if r["video_id"] == "vid_b"]
    assert [os.path.basename(p) for p in b[0]["video_frames"]] == ["9.jpg", "10.jpg", "11.jpg"]
    assert [(r["frame_index"], os.path.basename(r["file_name"])) for r in b] == [
        (0, "9.jpg"),
        (1, "10.jpg"),
        (2, "11.jpg"),
    ]
    assert all((r["height"], r["width"]) == (16, 32) for r in b)
    # every protocol of a split lists the same records
    assert DatasetCatalog.get(f"{prefix}_val_unseen") == val


def test_video_frame_list_pickles_compactly(vspw_root):
    record = load_vspw_split(vspw_root, "train")[0]
    frames = record["video_frames"]
    restored = pickle.loads(pickle.dumps(record))
    assert restored == record and isinstance(restored["video_frames"], VideoFrameList)
    assert len(pickle.dumps(frames)) < len(pickle.dumps(list(frames)))
    frames_copy = VideoFrameList("/x", ["1.jpg", "2.jpg"])
    frames_copy[0] = "/elsewhere/0.jpg"  # edited lists still round-trip exactly
    assert pickle.loads(pickle.dumps(frames_copy)) == ["/elsewhere/0.jpg", "/x/2.jpg"]


@pytest.mark.parametrize(
    "name, expected",
    [
        # raw:                 0    1    80   81   124  255  200
        ("vspw_train_seen", [255, 0, 79, 255, 255, 255, -1]),
        ("vspw_val_unseen", [255, 255, 255, 0, 43, 255, -1]),
        ("vspw_val_seen", [255, 0, 79, 255, 255, 255, -1]),
        ("vspw_val_all", [255, 0, 79, 80, 123, 255, -1]),
        ("vspw_test_unseen", [255, 255, 255, 0, 43, 255, -1]),
        ("vspw_test_all", [255, 0, 79, 80, 123, 255, -1]),
    ],
)
def test_vspw_label_lut(name, expected):
    lut = MetadataCatalog.get(name).label_lut
    assert len(lut) == 256
    assert [lut[r] for r in (0, 1, 80, 81, 124, 255, 200)] == expected


def test_vspw_metadata():
    names = get_vspw_class_names()
    assert len(names) == 124 and names[7] == "handrail_or_fence" and names[-1] == "train"
    train = MetadataCatalog.get("vspw_train_seen")
    assert train.stuff_classes == names[:80]
    assert train.class_texts[7] == "handrail, fence"
    assert train.class_texts[75] == "cupboard, showcase, storage rack"
    assert (train.seen_classes, train.unseen_classes) == (list(range(80)), [])
    assert train.hidden_raw_ids == list(range(81, 125))
    unseen = MetadataCatalog.get("vspw_val_unseen")
    assert unseen.stuff_classes == names[80:] and unseen.class_texts[-1] == "train"
    assert unseen.class_texts[names[80:].index("Mobile_phone")] == "Mobile phone"
    assert (unseen.seen_classes, unseen.unseen_classes, unseen.hidden_raw_ids) == (
        [],
        list(range(44)),
        [],
    )
    every = MetadataCatalog.get("vspw_val_all")
    assert every.stuff_classes == names
    assert (every.seen_classes, every.unseen_classes) == (list(range(80)), list(range(80, 124)))
    assert MetadataCatalog.get("vspw_val_seen").hidden_raw_ids == []
    for name in ("vspw_train_seen", "vspw_val_all", "vspw_test_seen"):
        meta = MetadataCatalog.get(name)
        assert (meta.ignore_label, meta.evaluator_type) == (255, "video_sem_seg")
        assert meta.dataset_root.endswith("VSPW_480p")
        assert meta.image_root == meta.sem_seg_root == os.path.join(meta.dataset_root, "data")


def test_vspw_missing_root(tmp_path):
    root = str(tmp_path / "nowhere" / "VSPW_480p")
    prefix, _ = _register(root)
    with pytest.raises(FileNotFoundError, match="datasets/README.md") as e:
        DatasetCatalog.get(f"{prefix}_val_all")
    assert root in str(e.value)


def test_vspw_split_file_errors(vspw_root):
    prefix, _ = _register(vspw_root)
    os.remove(os.path.join(vspw_root, "val.txt"))
    with pytest.raises(FileNotFoundError, match="val.txt") as e:
        DatasetCatalog.get(f"{prefix}_val_seen")
    assert "datasets/README.md" in str(e.value)
    _write(os.path.join(vspw_root, "val.txt"), "\n  \n")
    with pytest.raises(ValueError, match=r"val\.txt lists no video"):
        DatasetCatalog.get(f"{prefix}_val_seen")
    _write(os.path.join(vspw_root, "val.txt"), "vid_a\nvid_b\nvid_a\n")
    with pytest.raises(ValueError, match="more than once"):
        DatasetCatalog.get(f"{prefix}_val_seen")


def test_vspw_video_errors(vspw_root):
    prefix, _ = _register(vspw_root)
    with open(os.path.join(vspw_root, "train.txt"), "a") as f:
        f.write("vid_missing\n")
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get(f"{prefix}_train_seen")
    assert os.path.join(vspw_root, "data", "vid_missing", "origin") in str(e.value)

    _image(os.path.join(vspw_root, "data", "vid_b", "mask", "12.png"), 16, 32, 1, mode="L")
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get(f"{prefix}_val_all")
    assert os.path.join(vspw_root, "data", "vid_b", "mask", "12.png") in str(e.value)
    assert "12.jpg" in str(e.value)


def test_import_registers_without_disk_access(tmp_path):
    """`import ov2vss` with a non-existent DETECTRON2_DATASETS: every name registered, nothing read there."""
    missing = str(tmp_path / "no_datasets")
    code = f"""
import sys
touched = []
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir", "os.stat") and args and {missing!r} in str(args[0]):
        touched.append((event, str(args[0])))
sys.addaudithook(hook)
import ov2vss
from detectron2.data import DatasetCatalog
print(repr(sorted(DatasetCatalog.list())))
print(repr(touched))
"""
    env = dict(os.environ, DETECTRON2_DATASETS=missing, PYTHONWARNINGS="ignore")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    names_line, touched_line = out.stdout.strip().splitlines()[-2:]
    names = eval(names_line)
    expected = [
        "vspw_train_seen", "vspw_val_unseen", "vspw_val_seen", "vspw_val_all",
        "vspw_test_unseen", "vspw_test_seen", "vspw_test_all",
        "cityscapes_video_val", "cityscapes_video_train",
        "vspw_toy_train_seen", "vspw_toy_val_unseen", "vspw_toy_val_seen", "vspw_toy_val_all",
    ]  # fmt: skip
    assert set(expected) <= set(names)
    assert eval(touched_line) == []
    assert not os.path.exists(missing)


# ------------------------------------------------------------------ Cityscapes


def _cityscapes_tree(root, gt_names, size=(16, 32)):
    for name in gt_names:
        city = name.split("_")[0]
        _image(os.path.join(root, "gtFine", "val", city, name), *size, 0, mode="L")
    os.makedirs(os.path.join(root, "leftImg8bit_sequence", "val"), exist_ok=True)
    return str(root)


def test_cityscapes_records(tmp_path):
    root = _cityscapes_tree(
        tmp_path / "cityscapes",
        ["lindau_000001_000019_gtFine_labelTrainIds.png", "frankfurt_000000_000294_gtFine_labelTrainIds.png",
         "lindau_000000_000005_gtFine_labelTrainIds.png", "lindau_000000_000005_gtFine_labelIds.png"],
    )  # fmt: skip
    name = f"test_cs_{uuid.uuid4().hex[:8]}"
    register_cityscapes_video(name, root, "val")
    records = DatasetCatalog.get(name)
    assert [r["video_id"] for r in records] == [
        "frankfurt_000000",
        "lindau_000000",
        "lindau_000001",
    ]
    r = records[0]
    seq_dir = os.path.join(root, "leftImg8bit_sequence", "val", "frankfurt")
    assert len(r["video_frames"]) == 30 and r["frame_index"] == 19
    assert r["video_frames"][0] == os.path.join(seq_dir, "frankfurt_000000_000275_leftImg8bit.png")
    assert r["video_frames"][-1] == os.path.join(seq_dir, "frankfurt_000000_000304_leftImg8bit.png")
    assert r["file_name"] == os.path.join(seq_dir, "frankfurt_000000_000294_leftImg8bit.png")
    assert r["sem_seg_file_name"].endswith(
        os.path.join(
            "gtFine", "val", "frankfurt", "frankfurt_000000_000294_gtFine_labelTrainIds.png"
        )
    )
    assert (r["height"], r["width"]) == (16, 32)
    # an annotated frame below 19 clamps the snippet at frame 0
    early = records[1]
    assert early["frame_index"] == 5 and len(early["video_frames"]) == 16
    assert early["file_name"].endswith("lindau_000000_000005_leftImg8bit.png")
    assert records[2]["frame_index"] == 19


def test_cityscapes_metadata():
    meta = MetadataCatalog.get("cityscapes_video_val")
    assert meta.stuff_classes == CITYSCAPES_CLASS_NAMES and len(meta.stuff_classes) == 19
    assert meta.class_texts[6] == "traffic light"
    assert [meta.stuff_classes[i] for i in meta.novel_classes] == ["traffic sign", "rider", "train"]
    assert meta.unseen_classes == meta.novel_classes
    assert sorted(meta.seen_classes + meta.unseen_classes) == list(range(19))
    assert [meta.label_lut[v] for v in (0, 13, 18, 19, 200, 255)] == [0, 13, 18, -1, -1, 255]
    assert meta.hidden_raw_ids == [] and meta.evaluator_type == "video_sem_seg"


def test_cityscapes_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="datasets/README.md") as e:
        load_cityscapes_video(str(tmp_path / "missing"), "val")
    assert str(tmp_path / "missing") in str(e.value)
    root = _cityscapes_tree(tmp_path / "cs", ["aachen_000000_000019_gtFine_labelIds.png"])
    with pytest.raises(FileNotFoundError, match="prepare_cityscapes_video.py"):
        load_cityscapes_video(root, "val")
    _image(
        os.path.join(root, "gtFine", "val", "aachen", "aachen_0_19_gtFine_labelTrainIds.png"),
        4,
        4,
        0,
        mode="L",
    )
    with pytest.raises(ValueError, match="aachen_0_19_gtFine_labelTrainIds.png"):
        load_cityscapes_video(root, "val")


# ------------------------------------------------------------------ prepare scripts


def _script(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, "datasets", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_cityscapes_builtin(tmp_path):
    prep = _script("prepare_cityscapes_video")
    gt = tmp_path / "cityscapes" / "gtFine" / "val" / "aachen"
    gt.mkdir(parents=True)
    ids = np.array([[7, 8, 26, 0], [33, 31, 4, 24]], np.uint8)
    Image.fromarray(ids).save(gt / "aachen_000000_000019_gtFine_labelIds.png")
    (tmp_path / "cityscapes" / "leftImg8bit_sequence" / "val" / "aachen").mkdir(parents=True)
    assert prep.create_train_id_labels(str(tmp_path / "cityscapes"), "val", method="builtin") == 1
    out = np.asarray(Image.open(gt / "aachen_000000_000019_gtFine_labelTrainIds.png"))
    assert out.tolist() == [[0, 1, 13, 255], [18, 16, 255, 11]]
    assert (
        prep.create_train_id_labels(str(tmp_path / "cityscapes"), "val", method="builtin") == 0
    )  # already there
    problems = prep.check_sequences(str(tmp_path / "cityscapes"), "val")
    assert len(problems) == 1 and "30 of 30 snippet frames missing" in problems[0]


def test_prepare_vspw_reports_problems(vspw_root, capsys):
    prep = _script("prepare_vspw")
    assert (
        prep.main(["--root", vspw_root, "--splits", "train", "val", "--masks-per-video", "-1"]) == 0
    )
    # a mask value outside 0..124/255, a mask of the wrong size and a missing split file
    Image.fromarray(np.full((16, 32), 200, np.uint8)).save(
        os.path.join(vspw_root, "data", "vid_b", "mask", "10.png")
    )
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(
        os.path.join(vspw_root, "data", "vid_b", "mask", "11.png")
    )
    problems, summary = prep.check_vspw(vspw_root, ["train", "val", "test"], masks_per_video=-1)
    text = "\n".join(problems)
    assert len(problems) == 3, text
    assert "10.png: values [200]" in text and "11.png: size (8, 8)" in text and "test.txt" in text
    assert "val: 2 videos, 7 frames, 5 annotated frames" in summary
    with open(os.path.join(vspw_root, "label_num_dic_final.json"), "w") as f:
        json.dump({"others": 0, "wall": 1}, f)
    assert any("differ" in p for p in prep.check_vspw(vspw_root, ["train"], 0)[0])
    assert prep.main(["--root", vspw_root, "--splits", "val"]) == 1
    assert "PROBLEM" in capsys.readouterr().out
