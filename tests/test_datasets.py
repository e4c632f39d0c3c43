"""Dataset registration: VSPW layout, Cityscapes video layout, metadata, errors, label maps,
prepare scripts (a first run of each as a subprocess, further runs in this process)."""

import json
import os
import pickle
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import ov2vss  # noqa: F401  (registers the datasets)
from ov2vss.data.datasets.common import VideoFrameList
from ov2vss.data.datasets.register_cityscapes_video import (
    CITYSCAPES_CLASS_NAMES,
    load_cityscapes_video,
    register_cityscapes_video,
)
from ov2vss.data.datasets.register_vspw import load_vspw_split, register_vspw_family
from ov2vss.data.prepare_vspw import prepare_vspw
from ov2vss.data.vspw_classes import get_vspw_class_names


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


def _raw_vspw_tree(folder):
    """A VSPW tree as downloaded: raw masks (value 81 everywhere), no label maps yet."""
    stems = ["00000000", "00000003", "00000006", "00000009"]
    videos = {
        "vid_a": (24, 40, stems, stems),  # VSPW annotates every frame
        # un-padded names: the frame order must be numeric (9 before 10)
        "vid_b": (16, 32, ["9", "10", "11"], ["9", "10", "11"]),
    }
    return _vspw_tree(folder / "VSPW_480p", videos, {"train": ["vid_a"], "val": ["vid_a", "vid_b"]})


@pytest.fixture
def raw_vspw_root(tmp_path):
    return _raw_vspw_tree(tmp_path)


@pytest.fixture
def vspw_root(raw_vspw_root):
    """The same tree after the prepare step (label maps written)."""
    report = prepare_vspw(raw_vspw_root, ["train", "val"], get_vspw_class_names(), 80)
    assert (
        not report.problems and report.written == 7 * 3
    ), report  # vid_a (train+val), vid_b: all 3 spaces
    return raw_vspw_root


def _label_map(root, space, video, stem):
    return os.path.join(root, "annotations_detectron2", space, video, f"{stem}.png")


IMPORT_PROBE = """
import sys
missing = sys.argv[1]
touched = []
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir", "os.stat") and args and (
            missing in str(args[0])):
        touched.append((event, str(args[0])))
sys.addaudithook(hook)
import ov2vss
from detectron2.data import DatasetCatalog, MetadataCatalog
print(repr(MetadataCatalog.get("vspw_val_unseen").dataset_root))
print(repr(sorted(DatasetCatalog.list())))
print(repr(touched))
"""


@pytest.fixture(scope="module", autouse=True)
def command_lines(start_command, tmp_path_factory):
    """The module's command lines, started with it (fresh processes, ~4 s of imports each;
    the tests below run meanwhile): ``name -> (wait, folder)``. prepare_vspw.py on a raw VSPW
    tree, prepare_cityscapes_video.py on a Cityscapes tree, and a bare `import ov2vss` under
    a DETECTRON2_DATASETS that does not exist."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    vspw = _raw_vspw_tree(tmp_path_factory.mktemp("cli_vspw"))
    prepare_vspw = ["--root", vspw, "--splits", "train", "val", "--workers", "2"]
    cityscapes = _cityscapes_labelids_tree(tmp_path_factory.mktemp("cli_cityscapes"))
    missing = str(tmp_path_factory.mktemp("cli_import") / "no_datasets")
    return {
        "prepare_vspw": (
            start_command("python", "datasets/prepare_vspw.py", *prepare_vspw, env=env),
            vspw,
        ),
        "prepare_cityscapes_video": (
            start_command(
                "python",
                "datasets/prepare_cityscapes_video.py",
                *_cityscapes_args(cityscapes),
                env=env,
            ),
            cityscapes,
        ),
        "import": (
            start_command(
                "python", "-c", IMPORT_PROBE, missing, env=dict(env, DETECTRON2_DATASETS=missing)
            ),
            missing,
        ),
    }


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
    assert [r["frame_index"] for r in train] == [0, 1, 2, 3]
    a = os.path.join(vspw_root, "data", "vid_a")
    assert train[1]["file_name"] == os.path.join(a, "origin", "00000003.jpg")
    # the raw mask keeps its own key; sem_seg_file_name is the protocol's label map
    assert train[1]["raw_sem_seg_file_name"] == os.path.join(a, "mask", "00000003.png")
    assert train[1]["sem_seg_file_name"] == _label_map(vspw_root, "seen", "vid_a", "00000003")
    assert train[1]["video_frames"] == [
        os.path.join(a, "origin", f"0000000{i}.jpg") for i in (0, 3, 6, 9)
    ]
    assert (train[0]["height"], train[0]["width"], train[0]["video_id"]) == (24, 40, "vid_a")

    val = DatasetCatalog.get(f"{prefix}_val_all")
    assert len(val) == 7
    b = [r for r in val if r["video_id"] == "vid_b"]
    assert [os.path.basename(p) for p in b[0]["video_frames"]] == ["9.jpg", "10.jpg", "11.jpg"]
    assert [(r["frame_index"], os.path.basename(r["file_name"])) for r in b] == [
        (0, "9.jpg"),
        (1, "10.jpg"),
        (2, "11.jpg"),
    ]
    assert all((r["height"], r["width"]) == (16, 32) for r in b)

    # every protocol of a split lists the same records, each with its own label maps
    def without_label_map(records):
        return [{k: v for k, v in r.items() if k != "sem_seg_file_name"} for r in records]

    unseen = DatasetCatalog.get(f"{prefix}_val_unseen")
    assert without_label_map(unseen) == without_label_map(val)
    for protocol, records, value in (("unseen", unseen, 0), ("all", val, 80)):
        for r in records:
            stem = os.path.splitext(os.path.basename(r["file_name"]))[0]
            assert r["sem_seg_file_name"] == _label_map(vspw_root, protocol, r["video_id"], stem)
            # raw 81 (the first unseen class) in that label space
            assert (
                np.asarray(Image.open(r["sem_seg_file_name"])).tolist()
                == np.full((r["height"], r["width"]), value).tolist()
            )
    assert (np.asarray(Image.open(train[0]["sem_seg_file_name"])) == 255).all()  # unseen: 255


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
        assert meta.image_root == meta.raw_sem_seg_root == os.path.join(meta.dataset_root, "data")
        # detectron2's convention: sem_seg_root holds the label maps of the protocol's space
        assert meta.sem_seg_root == os.path.join(
            meta.dataset_root, "annotations_detectron2", meta.label_space
        )
    assert [MetadataCatalog.get(f"vspw_{n}").label_space for n in ("train_seen", "val_seen")] == [
        "seen",
        "seen",
    ]
    assert MetadataCatalog.get("vspw_test_all").label_space == "all"


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


def test_import_registers_without_disk_access(command_lines):
    """`import ov2vss` with a non-existent DETECTRON2_DATASETS: every name registered (VSPW's
    under that root), nothing read there."""
    wait, missing = command_lines["import"]
    out = wait()
    assert out.returncode == 0, out.stderr
    root_line, names_line, touched_line = out.stdout.strip().splitlines()[-3:]
    assert eval(root_line) == os.path.join(missing, "VSPW_480p")
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
        ["lindau_000001_000019_gtFine_labelTrainIds.png",
         "frankfurt_000000_000294_gtFine_labelTrainIds.png",
         "lindau_000000_000005_gtFine_labelTrainIds.png",
         "lindau_000000_000005_gtFine_labelIds.png"],
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


# ------------------------------------------------------------------ label maps


def test_loading_before_the_prepare_step_names_the_command(raw_vspw_root):
    prefix, _ = _register(raw_vspw_root)
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get(f"{prefix}_val_unseen")
    message = str(e.value)
    assert f"python datasets/prepare_vspw.py --root {raw_vspw_root}" in message
    assert os.path.join(raw_vspw_root, "annotations_detectron2", "unseen") in message

    prepare_vspw(raw_vspw_root, ["train", "val"], get_vspw_class_names(), 80)
    assert len(DatasetCatalog.get(f"{prefix}_val_unseen")) == 7
    missing = _label_map(raw_vspw_root, "all", "vid_b", "10")
    os.remove(missing)  # one label map gone: named, never a fallback to the raw mask
    with pytest.raises(FileNotFoundError, match="prepare_vspw.py") as e:
        DatasetCatalog.get(f"{prefix}_val_all")
    assert missing in str(e.value) and "1 of 3" in str(e.value)
    assert len(DatasetCatalog.get(f"{prefix}_val_seen")) == 7  # other spaces unaffected


def test_toy_without_label_maps_names_the_generator(raw_vspw_root):
    from ov2vss.data.datasets.register_vspw_toy import register_toy

    try:
        register_toy(raw_vspw_root)
        with pytest.raises(FileNotFoundError) as e:
            DatasetCatalog.get("vspw_toy_val_seen")
        assert f"python -m ov2vss.data.toy --root {raw_vspw_root}" in str(e.value)
    finally:
        register_toy()


def test_prepare_vspw_writes_label_maps_once(command_lines, dataset_script):
    wait, raw_vspw_root = command_lines["prepare_vspw"]
    out = wait()  # `python datasets/prepare_vspw.py --root ROOT --splits train val --workers 2`
    assert out.returncode == 0, out.stdout + out.stderr
    # 7 masks x 3 spaces (vid_a's seen label maps serve train_seen and val_seen)
    assert "wrote 21, skipped 0" in out.stdout
    assert "label maps" in out.stderr  # the progress bar
    spaces = {"seen": [255], "unseen": [0], "all": [80]}  # raw 81 in each space
    for space, values in spaces.items():
        for video, stem in (("vid_a", "00000003"), ("vid_a", "00000009"), ("vid_b", "11")):
            labels = np.asarray(Image.open(_label_map(raw_vspw_root, space, video, stem)))
            assert labels.dtype == np.uint8 and np.unique(labels).tolist() == values
    label_dir = os.path.join(raw_vspw_root, "annotations_detectron2")
    stamps = {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
        for d, _, files in os.walk(label_dir)
        for f in files
    }
    assert len(stamps) == 21  # and no temporary file left behind

    # the second run in this process (the command line was checked above)
    again = dataset_script("prepare_vspw", "--root", raw_vspw_root, "--splits", "train", "val")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "wrote 0, skipped 21 (up to date)" in again.stdout
    assert stamps == {p: os.stat(p).st_mtime_ns for p in stamps}


def test_prepare_vspw_refuses_bad_masks(vspw_root, dataset_script):
    mask_dir = os.path.join(vspw_root, "data", "vid_b", "mask")
    Image.fromarray(np.full((16, 32), 200, np.uint8)).save(os.path.join(mask_dir, "10.png"))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(mask_dir, "11.png"))
    with open(os.path.join(mask_dir, "9.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really a png")
    # in this process (the command line is checked above), its 2 workers forked from it
    out = dataset_script("prepare_vspw", "--root", vspw_root, "--workers", "2")
    assert out.returncode == 1
    problems = [line for line in out.stdout.splitlines() if line.startswith("PROBLEM")]
    text = "\n".join(problems)
    assert len(problems) == 4, out.stdout
    assert os.path.join(mask_dir, "10.png") + ": values [200] outside 0..124 and 255" in text
    assert os.path.join(mask_dir, "11.png") + ": size (8, 8) differs" in text
    assert os.path.join(mask_dir, "9.png") + ": unreadable" in text
    assert os.path.join(vspw_root, "test.txt") in text  # the default splits include test
    assert "refused 3 mask(s)" in out.stdout
    for stem in ("9", "10", "11"):  # nothing for the refused masks, in any space
        for space in ("seen", "unseen", "all"):
            assert not os.path.exists(_label_map(vspw_root, space, "vid_b", stem))
    # the good masks keep their label maps; no temporary file anywhere
    assert sorted(
        os.listdir(os.path.join(vspw_root, "annotations_detectron2", "all", "vid_a"))
    ) == ["00000000.png", "00000003.png", "00000006.png", "00000009.png"]
    assert os.listdir(os.path.join(vspw_root, "annotations_detectron2", "all", "vid_b")) == []


# ------------------------------------------------------------------ prepare scripts


def _cityscapes_labelids_tree(folder):
    """A Cityscapes tree with one *_gtFine_labelIds.png (ids 7, 8, 26, 0 / 33, 31, 4, 24)."""
    gt = folder / "cityscapes" / "gtFine" / "val" / "aachen"
    gt.mkdir(parents=True)
    ids = np.array([[7, 8, 26, 0], [33, 31, 4, 24]], np.uint8)
    Image.fromarray(ids).save(gt / "aachen_000000_000019_gtFine_labelIds.png")
    (folder / "cityscapes" / "leftImg8bit_sequence" / "val" / "aachen").mkdir(parents=True)
    return folder / "cityscapes"


def _cityscapes_args(root):
    return ["--root", str(root), "--splits", "val", "--method", "builtin"]


def test_prepare_cityscapes_builtin(command_lines, dataset_script):
    wait, root = command_lines["prepare_cityscapes_video"]
    out = wait()  # `python datasets/prepare_cityscapes_video.py --root ROOT ... builtin`
    assert out.returncode == 0, out.stdout + out.stderr
    assert "val: wrote 1 *_gtFine_labelTrainIds.png file(s)" in out.stdout
    gt = root / "gtFine" / "val" / "aachen"
    out = np.asarray(Image.open(gt / "aachen_000000_000019_gtFine_labelTrainIds.png"))
    assert out.tolist() == [[0, 1, 13, 255], [18, 16, 255, 11]]
    again = dataset_script("prepare_cityscapes_video", *_cityscapes_args(root), "--check-sequences")
    assert "val: wrote 0 " in again.stdout  # already there
    problems = [line for line in again.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 1 and "30 of 30 snippet frames missing" in problems[0]
    assert again.returncode == 1


def test_prepare_vspw_reports_problems(vspw_root, dataset_script):
    names = get_vspw_class_names()
    report = prepare_vspw(vspw_root, ["train", "val"], names, 80, write=False, masks_per_video=-1)
    assert report.problems == [] and report.written == 0
    # a mask value outside 0..124/255, a mask of the wrong size and a missing split file
    Image.fromarray(np.full((16, 32), 200, np.uint8)).save(
        os.path.join(vspw_root, "data", "vid_b", "mask", "10.png")
    )
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(
        os.path.join(vspw_root, "data", "vid_b", "mask", "11.png")
    )
    report = prepare_vspw(
        vspw_root, ["train", "val", "test"], names, 80, write=False, masks_per_video=-1
    )
    problems, summary = report.problems, report.summary
    text = "\n".join(problems)
    assert len(problems) == 3, text
    assert "10.png: values [200]" in text and "11.png: size (8, 8)" in text and "test.txt" in text
    assert "val: 2 videos, 7 frames, 7 annotated frames" in summary
    with open(os.path.join(vspw_root, "label_num_dic_final.json"), "w") as f:
        json.dump({"others": 0, "wall": 1}, f)
    report = prepare_vspw(vspw_root, ["train"], names, 80, write=False, masks_per_video=0)
    assert any("differ" in p for p in report.problems)
    out = dataset_script("prepare_vspw", "--root", vspw_root, "--splits", "val", "--check-only")
    assert out.returncode == 1
    assert "PROBLEM" in out.stdout
