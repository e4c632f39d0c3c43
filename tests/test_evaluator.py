"""VideoSemSegEvaluator on a tiny on-disk dataset whose metrics are computed by hand below;
its video consistency against a straight re-implementation of VSPW's VC_perclip.py."""

import json
import math
import os
import pickle
import random
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from PIL import Image

from ov2vss.data.prepare_vspw import write_label_map
from ov2vss.evaluation import VideoSemSegEvaluator
from ov2vss.evaluation.report import write_evaluation_reports

CLASSES = ["red circle", "blue star", "green square", "yellow ring"]
I = 255  # ignored pixel in the label-id tables below

# Label ids (the label maps) of every evaluated frame, 2x3 pixels, and the argmax predictions.
# The raw masks hold label + 1, ignored pixels 0 or 255 (see _raw_mask and the fixture).
# Video "a": frames 0..4; video "b": annotated frames 0, 3, 5 (b5 is entirely ignored).
GT = {
    ("a", 0): [[0, 0, 1], [2, 2, I]],
    ("a", 1): [[0, 0, 1], [2, 2, I]],
    ("a", 2): [[0, 0, 1], [2, 1, I]],
    ("a", 3): [[0, 0, 1], [2, 2, I]],
    ("a", 4): [[0, 1, 1], [2, 2, I]],
    ("b", 0): [[1, 1, 1], [0, 0, I]],
    ("b", 3): [[2, 2, 2], [2, 2, 2]],
    ("b", 5): [[I, I, I], [I, I, I]],
}
PRED = {
    ("a", 0): [[0, 0, 1], [2, 2, 0]],
    ("a", 1): [[0, 0, 1], [2, 1, 0]],
    ("a", 2): [[0, 0, 1], [2, 1, 3]],
    ("a", 3): [[0, 0, 1], [2, 2, 0]],
    ("a", 4): [[0, 0, 1], [2, 2, 0]],
    ("b", 0): [[1, 1, 0], [0, 2, 2]],
    ("b", 3): [[2, 2, 2], [2, 2, 3]],
    ("b", 5): [[0, 1, 2], [3, 0, 1]],
}

# Hand count of the confusion matrix (rows GT, columns prediction, ignored GT pixels dropped):
#   gt 0: [10, 0,  1, 0]  -> 11 GT pixels, TP 10
#   gt 1: [ 2, 8,  0, 0]  -> 10 GT pixels, TP 8
#   gt 2: [ 0, 1, 13, 1]  -> 15 GT pixels, TP 13
#   gt 3: [ 0, 0,  0, 0]  -> absent from the GT (predicted once)
# predicted counts: 12, 9, 14, 1; 36 valid pixels; 31 correct.
IOU = [10 / 13, 8 / 11, 13 / 16, math.nan]  # TP / (GT + pred - TP)
ACC = [10 / 11, 8 / 10, 13 / 15, math.nan]
MIOU = (10 / 13 + 8 / 11 + 13 / 16) / 3
FWIOU = (11 * 10 / 13 + 10 * 8 / 11 + 15 * 13 / 16) / 36
MACC = (10 / 11 + 8 / 10 + 13 / 15) / 3
PACC = 31 / 36
SEEN = (10 / 13 + 8 / 11) / 2  # classes 0, 1
UNSEEN = 13 / 16  # classes 2, 3; class 3 is absent from the GT
HIOU = 2 * SEEN * UNSEEN / (SEEN + UNSEEN)
# VC by hand; pixels numbered row-major 0..5. Pixel 5 of video "a" is ignored in every frame
# (raw 0 in even frames, raw 255 in odd ones: consistent only after relabelling).
# VSPW's VC_perclip.py compares the *raw* masks, where pixel 5 changes between any two frames:
# n=2, starts 0..2 (range(5 - 2)):
#   i=0: G drops pixel 5, P drops pixel 4     -> |{0,1,2,3}| / |{0,1,2,3,4}| = 4/5
#   i=1: G drops pixels 4, 5, P drops pixel 5 -> 4/4
#   i=2: G drops pixels 4, 5, P drops 4, 5    -> 4/4
#   video "b": b0 vs b3 differ everywhere -> |G| = 0, window left out.
# n=3, starts 0..1: both have G = P = {0,1,2,3} -> 1 each.
VC2 = (4 / 5 + 1 + 1) / 3
VC3 = 1.0
# The same on the label maps (a dataset whose records have no raw mask, e.g. Cityscapes):
#   n=2: i=0: G all 6, P drops pixel 4             -> 5/6
#        i=1: G drops pixel 4, P drops pixel 5     -> |{0,1,2,3}| / |{0,1,2,3,5}| = 4/5
#        i=2: G drops pixel 4, P drops pixels 4, 5 -> 4/5
#   n=3, starts 0..1: both have G = {0,1,2,3,5}, P = {0,1,2,3} -> 4/5 each.
VC2_LABEL_MAPS = (5 / 6 + 4 / 5 + 4 / 5) / 3
VC3_LABEL_MAPS = 4 / 5

EXPECTED = {
    "mIoU": MIOU,
    "fwIoU": FWIOU,
    "mACC": MACC,
    "pACC": PACC,
    "mIoU-seen": SEEN,
    "mIoU-unseen": UNSEEN,
    "hIoU": HIOU,
    "mVC2": VC2,
    "mVC3": VC3,
    **{f"IoU-{c}": v for c, v in zip(CLASSES, IOU)},
    **{f"ACC-{c}": v for c, v in zip(CLASSES, ACC)},
}
EXPECTED_LABEL_MAPS = dict(EXPECTED, mVC2=VC2_LABEL_MAPS, mVC3=VC3_LABEL_MAPS)


def _raw_mask(labels, ignore_raw):
    labels = np.array(labels, dtype=np.int64)
    return np.where(labels == I, ignore_raw, labels + 1).astype(np.uint8)


def _lut(num_classes):
    lut = [-1] * 256
    for raw in range(1, num_classes + 1):
        lut[raw] = raw - 1
    lut[0] = lut[255] = 255
    return lut


def _register(name, records, lut, seen, unseen):
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(
        stuff_classes=CLASSES[: len(seen) + len(unseen)],
        class_texts=CLASSES[: len(seen) + len(unseen)],
        label_lut=lut,
        seen_classes=seen,
        unseen_classes=unseen,
        hidden_raw_ids=[],
        ignore_label=255,
        evaluator_type="video_sem_seg",
    )


@pytest.fixture
def dataset(tmp_path):
    """Register the toy videos (raw masks on disk, raw ids 1..4, 0/255 ignored, and their
    label maps written by the prepare step's code) under a unique name; yields
    (name, {key: file_name}, {key: raw mask path}, {key: label map path}). ``name +
    "_label_maps"`` lists the same records without their raw masks."""
    lut = _lut(len(CLASSES))
    masks = dict(GT)
    masks[("bad", 0)] = None  # a raw mask with the value 7, not allowed by the LUT
    files, mask_files, label_files, records = {}, {}, {}, []
    for (video, index), labels in masks.items():
        mask_dir = tmp_path / video / "mask"
        mask_dir.mkdir(parents=True, exist_ok=True)
        mask_path = mask_dir / f"{index:05d}.png"
        label_path = tmp_path / "annotations_detectron2" / "all" / video / f"{index:05d}.png"
        if labels is None:
            raw = np.array([[1, 7, 2], [0, 7, 255]], dtype=np.uint8)
            Image.fromarray(raw).save(mask_path)
            label_path.parent.mkdir(parents=True)
            Image.fromarray(np.array([[0, 0, 1], [I, 0, I]], np.uint8)).save(label_path)
        else:
            if video == "a":  # VSPW stores palette ("P") masks: the indices are the ids
                img = Image.fromarray(_raw_mask(labels, 0 if index % 2 == 0 else 255))
                img.putpalette([v for i in range(256) for v in (i, 255 - i, 7 * i % 256)])
                assert img.mode == "P"
                img.save(mask_path)
            else:
                Image.fromarray(_raw_mask(labels, 255 if index == 0 else 0)).save(mask_path)
            assert write_label_map(str(mask_path), (2, 3), 4, [(str(label_path), lut)]) == (
                1,
                0,
                None,
            )
            assert np.asarray(Image.open(label_path)).tolist() == labels
        file_name = str(tmp_path / video / "origin" / f"{index:05d}.jpg")
        files[(video, index)] = file_name
        mask_files[(video, index)] = str(mask_path)
        label_files[(video, index)] = str(label_path)
        records.append(
            {
                "file_name": file_name,
                "sem_seg_file_name": str(label_path),
                "raw_sem_seg_file_name": str(mask_path),
                "video_id": video,
                "frame_index": index,
                "video_frames": [],  # unused by the evaluator
                "height": 2,
                "width": 3,
            }
        )

    name = f"test_eval_{uuid.uuid4().hex[:8]}"
    names = [name, name + "_unseen_only", name + "_label_maps"]
    _register(names[0], records, lut, [0, 1], [2, 3])
    _register(names[1], records, lut, [], [0, 1, 2, 3])
    without_raw = [{k: v for k, v in r.items() if k != "raw_sem_seg_file_name"} for r in records]
    _register(names[2], without_raw, lut, [0, 1], [2, 3])
    yield name, files, mask_files, label_files
    for n in names:
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


def _sample(files, key, pred=None):
    pred = torch.tensor(PRED[key] if pred is None else pred)
    scores = torch.nn.functional.one_hot(pred, len(CLASSES)).permute(2, 0, 1).float()
    inp = {"file_name": files[key], "video_id": key[0], "frame_index": key[1]}
    return inp, {"sem_seg": scores}


def _run(evaluator, files, keys, batch_size=1):
    evaluator.reset()
    for start in range(0, len(keys), batch_size):
        pairs = [_sample(files, k) for k in keys[start : start + batch_size]]
        evaluator.process([p[0] for p in pairs], [p[1] for p in pairs])


def _as_main_process_of_two(monkeypatch, rank1):
    """Simulate DDP with two ranks through the evaluator's real gather/merge code: ``rank1``
    evaluates as a non-main process (its state goes, pickled, to gather; it returns None),
    then gather on the main process returns [own state, rank 1's state]."""
    sent = []
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: sent.append(pickle.dumps(data)) or [])
    assert rank1.evaluate() is None
    assert len(sent) == 1
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data, pickle.loads(sent[0])])


def _assert_same(results, expected):
    assert list(results) == ["sem_seg"]
    got = results["sem_seg"]
    assert set(got) == set(expected)
    for k, v in expected.items():
        if math.isnan(v):
            assert math.isnan(got[k]), k
        else:
            assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-12), k


def _percent(metrics):
    return {k: 100 * v for k, v in metrics.items()}


def test_every_metric_matches_hand_computation(dataset, tmp_path):
    name, files, _, _ = dataset
    out = tmp_path / "inference" / name
    evaluator = VideoSemSegEvaluator(
        name, distributed=False, output_dir=str(out), vc_windows=(2, 3)
    )
    _run(evaluator, files, list(PRED))
    results = evaluator.evaluate()
    _assert_same(results, _percent(EXPECTED))
    assert list(results["sem_seg"])[:4] == ["mIoU", "fwIoU", "mACC", "pACC"]
    assert write_evaluation_reports(evaluator) == [str(out / "report.png")]  # as Trainer.test

    # metrics.json and its PNG report, no per-frame dump; NaN (class 3 absent) is written as null
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.png"]
    written = json.loads((out / "metrics.json").read_text())["sem_seg"]
    assert written["IoU-yellow ring"] is None
    assert written["mIoU"] == pytest.approx(100 * MIOU)
    assert set(written) == set(EXPECTED)


def test_video_consistency_uses_the_raw_masks(dataset):
    """Raw 0 <-> 255 flips (both ignored, the same label 255) change VC as in VSPW's script;
    records without a raw mask fall back to the label maps (the former computation)."""
    name, files, _, _ = dataset
    for dataset_name, expected in ((name, EXPECTED), (name + "_label_maps", EXPECTED_LABEL_MAPS)):
        evaluator = VideoSemSegEvaluator(dataset_name, distributed=False, vc_windows=(2, 3))
        _run(evaluator, files, list(PRED))
        _assert_same(evaluator.evaluate(), _percent(expected))
    assert VC2 != VC2_LABEL_MAPS and VC3 != VC3_LABEL_MAPS


def test_results_independent_of_order_batching_and_processes(dataset, monkeypatch):
    name, files, _, _ = dataset
    keys = list(PRED)
    ref = VideoSemSegEvaluator(name, distributed=False, vc_windows=(2, 3))
    _run(ref, files, keys)
    expected = {k: v / 100 for k, v in ref.evaluate()["sem_seg"].items()}

    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)
    for order, batch in ((shuffled, 3), (keys[::-1], 2)):
        ev = VideoSemSegEvaluator(name, distributed=False, vc_windows=(2, 3))
        _run(ev, files, order, batch_size=batch)
        _assert_same(ev.evaluate(), _percent(expected))

    # Two DDP ranks, each with interleaved frames of both videos.
    rank0 = VideoSemSegEvaluator(name, distributed=True, vc_windows=(2, 3))
    rank1 = VideoSemSegEvaluator(name, distributed=True, vc_windows=(2, 3))
    _run(rank0, files, shuffled[0::2])
    _run(rank1, files, shuffled[1::2])
    _as_main_process_of_two(monkeypatch, rank1)
    _assert_same(rank0.evaluate(), _percent(expected))
    _assert_same(ref.evaluate(), _percent(EXPECTED))  # sanity: the reference is the hand one


def test_same_frame_on_two_ranks_is_an_error(dataset, monkeypatch):
    name, files, _, _ = dataset
    rank0 = VideoSemSegEvaluator(name, distributed=True, vc_windows=(2,))
    rank1 = VideoSemSegEvaluator(name, distributed=True, vc_windows=(2,))
    _run(rank0, files, [("a", 0), ("a", 1)])
    _run(rank1, files, [("a", 1), ("a", 2)])
    _as_main_process_of_two(monkeypatch, rank1)
    with pytest.raises(ValueError, match=r"frame 1 of video 'a' evaluated twice"):
        rank0.evaluate()


def test_only_one_class_group(dataset):
    name, files, _, _ = dataset
    evaluator = VideoSemSegEvaluator(name + "_unseen_only", distributed=False, vc_windows=())
    _run(evaluator, files, list(PRED))
    res = evaluator.evaluate()["sem_seg"]
    assert "mIoU-seen" not in res and "hIoU" not in res
    assert not any(k.startswith("mVC") for k in res)
    assert res["mIoU-unseen"] == pytest.approx(100 * MIOU)  # every class is unseen here


def test_vc_without_any_window_is_nan(dataset):
    name, files, _, _ = dataset
    evaluator = VideoSemSegEvaluator(name, distributed=False, vc_windows=(5, 2))
    _run(evaluator, files, list(PRED))
    res = evaluator.evaluate()["sem_seg"]
    assert math.isnan(res["mVC5"])  # 5 frames give range(5 - 5) = no window
    assert res["mVC2"] == pytest.approx(100 * VC2)


def test_dump_predictions_writes_rle_per_class(dataset, tmp_path):
    import pycocotools.mask as mask_util

    name, files, _, _ = dataset
    out = tmp_path / "dump"
    evaluator = VideoSemSegEvaluator(
        name, distributed=False, output_dir=str(out), vc_windows=(), dump_predictions=True
    )
    _run(evaluator, files, [("a", 2)])
    evaluator.evaluate()
    write_evaluation_reports(evaluator)
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json",
        "report.png",
        "sem_seg_predictions.json",
    ]
    entries = json.loads((out / "sem_seg_predictions.json").read_text())
    assert [e["category_id"] for e in entries] == [0, 1, 2, 3]
    decoded = sum(
        e["category_id"] * mask_util.decode(e["segmentation"]).astype(int) for e in entries
    )
    assert decoded.tolist() == PRED[("a", 2)]


def test_bad_inputs_raise_errors_naming_the_problem(dataset):
    name, files, mask_files, label_files = dataset
    evaluator = VideoSemSegEvaluator(name, distributed=False, vc_windows=(2,))

    inp, out = _sample(files, ("a", 0), pred=[[0, 0, 1], [2, 2, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match=r"size 3x2 .*size 3x3") as err:
        evaluator.process([inp], [out])
    assert label_files[("a", 0)] in str(err.value)  # the ground truth is the label map

    inp, out = _sample(files, ("a", 0))
    with pytest.raises(ValueError, match=r"C = 4.*\(3, 2, 3\)"):
        evaluator.process([inp], [{"sem_seg": out["sem_seg"][:3]}])

    files = dict(files, bad=files[("a", 0)].replace("/a/", "/bad/"))
    bad_inp = {"file_name": files["bad"], "video_id": "bad", "frame_index": 0}
    with pytest.raises(ValueError, match=r"raw values not allowed .*\[7\]") as err:
        evaluator.process([bad_inp], [out])
    assert mask_files[("bad", 0)] in str(err.value)

    # a label map outside the label space, a stale one, a raw mask of another size
    good = np.asarray(Image.open(label_files[("a", 1)])).copy()
    inp1, out1 = _sample(files, ("a", 1))
    Image.fromarray(np.where(good == 2, 7, good).astype(np.uint8)).save(label_files[("a", 1)])
    with pytest.raises(ValueError, match=r"outside the class range \[0, 4\).*\[7\]") as err:
        evaluator.process([inp1], [out1])
    assert label_files[("a", 1)] in str(err.value)
    Image.fromarray(np.where(good == 2, 3, good).astype(np.uint8)).save(label_files[("a", 1)])
    with pytest.raises(ValueError, match=r"disagrees with its raw mask .* at 2 pixel") as err:
        evaluator.process([inp1], [out1])
    assert label_files[("a", 1)] in str(err.value) and mask_files[("a", 1)] in str(err.value)
    Image.fromarray(good).save(label_files[("a", 1)])
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(mask_files[("a", 1)])
    with pytest.raises(ValueError, match=r"raw mask .* size 3x3 .*size 3x2") as err:
        evaluator.process([inp1], [out1])
    assert mask_files[("a", 1)] in str(err.value)

    stranger = {"file_name": "/elsewhere/frame.jpg", "video_id": "a", "frame_index": 9}
    with pytest.raises(ValueError, match="/elsewhere/frame.jpg is not a frame of"):
        evaluator.process([stranger], [out])

    evaluator.process([inp], [out])
    with pytest.raises(ValueError, match=r"frame 0 of video 'a' evaluated twice"):
        evaluator.process([inp], [out])

    with pytest.raises(ValueError, match="vc_windows"):
        VideoSemSegEvaluator(name, distributed=False, vc_windows=(1, 8))


# ------------------------------------------------------------------ VSPW's VC_perclip.py


def _official_get_common(list_, predlist, clip_num, h, w):
    """VC_perclip.py's get_common (github.com/VSPW-dataset/VSPW_code), re-typed."""
    accs = []
    for i in range(len(list_) - clip_num):
        global_common = np.ones((h, w))
        predglobal_common = np.ones((h, w))
        for j in range(1, clip_num):
            common = list_[i] == list_[i + j]
            global_common = np.logical_and(global_common, common)
            pred_common = predlist[i] == predlist[i + j]
            predglobal_common = np.logical_and(predglobal_common, pred_common)
        pred = predglobal_common * global_common
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = pred.sum() / global_common.sum()
        accs.append(acc)
    return accs


def _official_vc(mask_root, pred_maps, videos, clip_num):
    """VC_perclip.py's main loop: every mask of every video, sorted by file name; videos with
    at most clip_num masks skipped; nanmean over all windows of all videos."""
    total_acc = []
    for video in videos:
        images = sorted(os.listdir(os.path.join(mask_root, video, "mask")))
        if len(images) <= clip_num:
            continue
        imglist, predlist = [], []
        for imgname in images:
            img = Image.open(os.path.join(mask_root, video, "mask", imgname))
            w, h = img.size
            imglist.append(np.array(img))
            predlist.append(pred_maps[(video, imgname)])
        total_acc.extend(_official_get_common(imglist, predlist, clip_num, h, w))
    return float(np.nanmean(np.array(total_acc)))


def test_video_consistency_matches_the_official_script(tmp_path):
    rng = np.random.default_rng(5)
    num_classes, lut = 3, _lut(3)
    lengths = {"v0": 7, "v1": 5, "v2": 3, "v3": 9}  # v2: shorter than some windows
    records, preds = [], {}
    for video, length in lengths.items():
        raw = rng.choice([0, 255, 1, 2, 3], size=(4, 5))
        pred = rng.integers(0, num_classes, size=(4, 5))
        for t in range(length):
            # few pixels change per frame (mostly 0 <-> 255 and class changes), so most
            # windows have consistent pixels; predictions flicker a little
            flip = rng.random((4, 5)) < 0.15
            raw = np.where(flip, rng.choice([0, 255, 1, 2, 3], size=(4, 5)), raw)
            pred = np.where(rng.random((4, 5)) < 0.1, rng.integers(0, 3, size=(4, 5)), pred)
            mask = tmp_path / video / "mask" / f"{t:04d}.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(raw.astype(np.uint8)).save(mask)
            label = tmp_path / "labels" / video / f"{t:04d}.png"
            assert write_label_map(str(mask), (4, 5), 3, [(str(label), lut)])[2] is None
            file_name = str(tmp_path / video / "origin" / f"{t:04d}.jpg")
            records.append(
                {
                    "file_name": file_name,
                    "sem_seg_file_name": str(label),
                    "raw_sem_seg_file_name": str(mask),
                    "video_id": video,
                    "frame_index": t,
                    "height": 4,
                    "width": 5,
                }
            )
            preds[(video, mask.name)] = pred.copy()
    name = f"test_vc_{uuid.uuid4().hex[:8]}"
    _register(name, records, lut, [0, 1], [2])
    results = []
    try:
        for order in (reversed(records), records):  # out of order, then video by video
            evaluator = VideoSemSegEvaluator(name, distributed=False, vc_windows=(2, 3, 4, 8))
            evaluator.reset()
            for r in order:
                key = (r["video_id"], os.path.basename(r["sem_seg_file_name"]))
                pred = torch.as_tensor(preds[key])
                scores = torch.nn.functional.one_hot(pred, num_classes).permute(2, 0, 1).float()
                evaluator.process([{"file_name": r["file_name"]}], [{"sem_seg": scores}])
            results.append((evaluator.evaluate()["sem_seg"], evaluator.peak_frames_held))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    # maps held at once: reversed, a video's frames wait for its first one (v3: 8 of 9);
    # in order, the longest window
    assert results[0][1] == max(lengths.values()) - 1 and results[1][1] == 8
    for n in (2, 3, 4, 8):
        official = _official_vc(str(tmp_path), preds, list(lengths), n)
        for res, _ in results:
            assert res[f"mVC{n}"] == pytest.approx(100 * official, rel=1e-12, abs=1e-12), n
        assert results[0][0][f"mVC{n}"] == results[1][0][f"mVC{n}"]  # the very same number


# ------------------------------------------------------------------ the in-order VC path


def test_frames_in_order_hold_at_most_the_longest_window(dataset, monkeypatch):
    """Video by video, frames in order (streaming evaluation): VC is computed as each video
    goes, holding max(vc_windows) frames; any other order keeps more; the results are equal."""
    name, files, _, _ = dataset
    keys = list(PRED)  # video "a" 0..4, then "b" 0, 3, 5
    in_order = VideoSemSegEvaluator(name, distributed=False, vc_windows=(2, 3))
    _run(in_order, files, keys)
    assert in_order.peak_frames_held == 3 and in_order.frames_held == 0
    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)
    interleaved = VideoSemSegEvaluator(name, distributed=False, vc_windows=(2, 3))
    _run(interleaved, files, shuffled)
    assert interleaved.peak_frames_held > 3
    _assert_same(in_order.evaluate(), _percent(EXPECTED))
    for _ in range(2):  # evaluate() leaves the state as it is
        _assert_same(interleaved.evaluate(), _percent(EXPECTED))

    # a video cut between two processes (the test loader's contiguous split): rank 0 holds
    # the start of "a" in order, rank 1 its end (out of order) and "b" (in order)
    rank0 = VideoSemSegEvaluator(name, distributed=True, vc_windows=(2, 3))
    rank1 = VideoSemSegEvaluator(name, distributed=True, vc_windows=(2, 3))
    _run(rank0, files, keys[:3])
    _run(rank1, files, keys[3:])
    assert rank0.frames_held == 3 and rank1.frames_held == 2  # a0..a2 | a3, a4
    _as_main_process_of_two(monkeypatch, rank1)
    _assert_same(rank0.evaluate(), _percent(EXPECTED))


def test_one_video_id_with_several_frame_lists_is_several_videos(tmp_path):
    """Cityscapes: the annotated frames of one sequence each have their own 30-frame snippet
    (video_frames) and the same frame_index 19: they are different videos, not duplicates."""
    lut = _lut(2)
    records = []
    for snippet, first in enumerate((275, 557)):
        label = tmp_path / f"{snippet}.png"
        Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8)).save(label)
        frames = [str(tmp_path / f"seq_{f:06d}.png") for f in range(first, first + 30)]
        records.append(
            {
                "file_name": frames[19],
                "sem_seg_file_name": str(label),
                "video_id": "frankfurt_000000",
                "frame_index": 19,
                "video_frames": frames,
                "height": 2,
                "width": 2,
            }
        )
    name = f"test_snippets_{uuid.uuid4().hex[:8]}"
    _register(name, records, lut, [0], [1])
    try:
        evaluator = VideoSemSegEvaluator(name, distributed=False, vc_windows=(2,))
        evaluator.reset()
        for r in records:
            scores = torch.nn.functional.one_hot(torch.tensor([[0, 1], [1, 1]]), 2)
            evaluator.process(
                [{"file_name": r["file_name"]}], [{"sem_seg": scores.permute(2, 0, 1).float()}]
            )
        res = evaluator.evaluate()["sem_seg"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert res["pACC"] == pytest.approx(75.0)
    assert math.isnan(res["mVC2"])  # one frame per video: no window
