"""VideoSemSegEvaluator on a tiny on-disk dataset whose metrics are computed by hand below."""

import json
import math
import pickle
import random
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from PIL import Image

from ov2vss.evaluation import VideoSemSegEvaluator

CLASSES = ["red circle", "blue star", "green square", "yellow ring"]
I = 255  # ignored pixel in the label-id tables below

# Label ids (after the LUT) of every evaluated frame, 2x3 pixels, and the argmax predictions.
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
# n=2, starts 0..2 (range(5 - 2)):
#   i=0: G all 6, P drops pixel 4             -> 5/6
#   i=1: G drops pixel 4, P drops pixel 5     -> |{0,1,2,3}| / |{0,1,2,3,5}| = 4/5
#   i=2: G drops pixel 4, P drops pixels 4, 5 -> 4/5
#   video "b": b0 vs b3 differ everywhere -> |G| = 0, window left out.
# n=3, starts 0..1: both have G = {0,1,2,3,5}, P = {0,1,2,3} -> 4/5 each.
VC2 = (5 / 6 + 4 / 5 + 4 / 5) / 3
VC3 = 4 / 5

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


def _raw_mask(labels, ignore_raw):
    labels = np.array(labels, dtype=np.int64)
    return np.where(labels == I, ignore_raw, labels + 1).astype(np.uint8)


@pytest.fixture
def dataset(tmp_path):
    """Register the toy videos (masks on disk, raw ids 1..4, 0/255 ignored) under a unique
    name; yields (name, {key: file_name}, {key: mask path})."""
    lut = [-1] * 256
    for raw in range(1, len(CLASSES) + 1):
        lut[raw] = raw - 1
    lut[0] = lut[255] = 255

    masks = dict(GT)
    masks[("bad", 0)] = None  # a mask with the raw value 7, not allowed by the LUT
    files, mask_files, records = {}, {}, []
    for (video, index), labels in masks.items():
        mask_dir = tmp_path / video / "mask"
        mask_dir.mkdir(parents=True, exist_ok=True)
        mask_path = mask_dir / f"{index:05d}.png"
        if labels is None:
            raw = np.array([[1, 7, 2], [0, 7, 255]], dtype=np.uint8)
            Image.fromarray(raw).save(mask_path)
        elif video == "a":  # VSPW stores palette ("P") masks: the indices are the ids
            img = Image.fromarray(_raw_mask(labels, 0 if index % 2 == 0 else 255))
            img.putpalette([v for i in range(256) for v in (i, 255 - i, 7 * i % 256)])
            assert img.mode == "P"
            img.save(mask_path)
        else:
            Image.fromarray(_raw_mask(labels, 255 if index == 0 else 0)).save(mask_path)
        file_name = str(tmp_path / video / "origin" / f"{index:05d}.jpg")
        files[(video, index)] = file_name
        mask_files[(video, index)] = str(mask_path)
        records.append(
            {
                "file_name": file_name,
                "sem_seg_file_name": str(mask_path),
                "video_id": video,
                "frame_index": index,
                "video_frames": [],  # unused by the evaluator
                "height": 2,
                "width": 3,
            }
        )

    name = f"test_eval_{uuid.uuid4().hex[:8]}"
    names = [name, name + "_unseen_only"]
    for n, seen in zip(names, ([0, 1], [])):
        DatasetCatalog.register(n, lambda: [dict(r) for r in records])
        MetadataCatalog.get(n).set(
            stuff_classes=CLASSES,
            class_texts=CLASSES,
            label_lut=lut,
            seen_classes=seen,
            unseen_classes=[2, 3] if seen else [0, 1, 2, 3],
            hidden_raw_ids=[],
            ignore_label=255,
            evaluator_type="video_sem_seg",
        )
    yield name, files, mask_files
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
    name, files, _ = dataset
    out = tmp_path / "inference" / name
    evaluator = VideoSemSegEvaluator(
        name, distributed=False, output_dir=str(out), vc_windows=(2, 3)
    )
    _run(evaluator, files, list(PRED))
    results = evaluator.evaluate()
    _assert_same(results, _percent(EXPECTED))
    assert list(results["sem_seg"])[:4] == ["mIoU", "fwIoU", "mACC", "pACC"]

    # metrics.json and nothing else; NaN (class 3 absent from the GT) is written as null
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    written = json.loads((out / "metrics.json").read_text())["sem_seg"]
    assert written["IoU-yellow ring"] is None
    assert written["mIoU"] == pytest.approx(100 * MIOU)
    assert set(written) == set(EXPECTED)


def test_results_independent_of_order_batching_and_processes(dataset, monkeypatch):
    name, files, _ = dataset
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
    name, files, _ = dataset
    rank0 = VideoSemSegEvaluator(name, distributed=True, vc_windows=(2,))
    rank1 = VideoSemSegEvaluator(name, distributed=True, vc_windows=(2,))
    _run(rank0, files, [("a", 0), ("a", 1)])
    _run(rank1, files, [("a", 1), ("a", 2)])
    _as_main_process_of_two(monkeypatch, rank1)
    with pytest.raises(ValueError, match=r"frame 1 of video 'a' evaluated twice"):
        rank0.evaluate()


def test_only_one_class_group(dataset):
    name, files, _ = dataset
    evaluator = VideoSemSegEvaluator(name + "_unseen_only", distributed=False, vc_windows=())
    _run(evaluator, files, list(PRED))
    res = evaluator.evaluate()["sem_seg"]
    assert "mIoU-seen" not in res and "hIoU" not in res
    assert not any(k.startswith("mVC") for k in res)
    assert res["mIoU-unseen"] == pytest.approx(100 * MIOU)  # every class is unseen here


def test_vc_without_any_window_is_nan(dataset):
    name, files, _ = dataset
    evaluator = VideoSemSegEvaluator(name, distributed=False, vc_windows=(5, 2))
    _run(evaluator, files, list(PRED))
    res = evaluator.evaluate()["sem_seg"]
    assert math.isnan(res["mVC5"])  # 5 frames give range(5 - 5) = no window
    assert res["mVC2"] == pytest.approx(100 * VC2)


def test_dump_predictions_writes_rle_per_class(dataset, tmp_path):
    import pycocotools.mask as mask_util

    name, files, _ = dataset
    out = tmp_path / "dump"
    evaluator = VideoSemSegEvaluator(
        name, distributed=False, output_dir=str(out), vc_windows=(), dump_predictions=True
    )
    _run(evaluator, files, [("a", 2)])
    evaluator.evaluate()
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "sem_seg_predictions.json"]
    entries = json.loads((out / "sem_seg_predictions.json").read_text())
    assert [e["category_id"] for e in entries] == [0, 1, 2, 3]
    decoded = sum(
        e["category_id"] * mask_util.decode(e["segmentation"]).astype(int) for e in entries
    )
    assert decoded.tolist() == PRED[("a", 2)]


def test_bad_inputs_raise_errors_naming_the_problem(dataset):
    name, files, mask_files = dataset
    evaluator = VideoSemSegEvaluator(name, distributed=False, vc_windows=(2,))

    inp, out = _sample(files, ("a", 0), pred=[[0, 0, 1], [2, 2, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match=r"size 3x2 .*size 3x3") as err:
        evaluator.process([inp], [out])
    assert mask_files[("a", 0)] in str(err.value)

    inp, out = _sample(files, ("a", 0))
    with pytest.raises(ValueError, match=r"C = 4.*\(3, 2, 3\)"):
        evaluator.process([inp], [{"sem_seg": out["sem_seg"][:3]}])

    files = dict(files, bad=files[("a", 0)].replace("/a/", "/bad/"))
    bad_inp = {"file_name": files["bad"], "video_id": "bad", "frame_index": 0}
    with pytest.raises(ValueError, match=r"raw values not allowed .*\[7\]") as err:
        evaluator.process([bad_inp], [out])
    assert mask_files[("bad", 0)] in str(err.value)

    stranger = {"file_name": "/elsewhere/frame.jpg", "video_id": "a", "frame_index": 9}
    with pytest.raises(ValueError, match="/elsewhere/frame.jpg is not a frame of"):
        evaluator.process([stranger], [out])

    evaluator.process([inp], [out])
    with pytest.raises(ValueError, match=r"frame 0 of video 'a' evaluated twice"):
        evaluator.process([inp], [out])

    with pytest.raises(ValueError, match="vc_windows"):
        VideoSemSegEvaluator(name, distributed=False, vc_windows=(1, 8))
