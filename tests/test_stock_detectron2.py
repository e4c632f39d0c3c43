"""The registered names work with detectron2's stock parts, as another detectron2 project
would use them: SemSegEvaluator, DatasetMapper and a DefaultTrainer + SemanticSegmentor run.

The VSPW and Cityscapes trees are generated here (a few videos of 32x48) and registered under
the real names on a temporary root; the names are registered back on the default root after.
"""

import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils.env import seed_all_rng
from PIL import Image

import ov2vss  # noqa: F401  (registers the datasets)
from ov2vss.data.datasets.register_cityscapes_video import register_all_cityscapes_video
from ov2vss.data.datasets.register_vspw import register_all_vspw
from ov2vss.data.datasets.register_vspw_toy import register_toy
from ov2vss.data.prepare_vspw import prepare_vspw
from ov2vss.data.vspw_classes import VSPW_NUM_SEEN, get_vspw_class_names
from ov2vss.evaluation import VideoSemSegEvaluator

H, W = 32, 48
# raw values drawn into the masks: ignored (0, 255), seen (1..80) and unseen (81..124) classes
RAW_VALUES = [0, 255, 1, 2, 7, 40, 80, 81, 82, 100, 124]


def _raw_mask(rng):
    """A 32x48 mask of 4x6 blocks of 8x8 pixels, each block one raw value."""
    blocks = rng.choice(RAW_VALUES, size=(H // 8, W // 8))
    return np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)


def _vspw_tree(root, rng, drawn):
    """3 frames per video; ``drawn[mask path]`` = the raw mask as drawn."""
    splits = {"train": ["tr_a", "tr_b"], "val": ["va_a", "va_b", "va_c"]}
    for names in splits.values():
        for video in names:
            for t in range(3):
                frame = os.path.join(root, "data", video, "origin", f"{t:08d}.jpg")
                os.makedirs(os.path.dirname(frame), exist_ok=True)
                Image.fromarray(np.full((H, W, 3), 60 * t, np.uint8)).save(frame)
                mask = os.path.join(root, "data", video, "mask", f"{t:08d}.png")
                os.makedirs(os.path.dirname(mask), exist_ok=True)
                drawn[mask] = _raw_mask(rng)
                Image.fromarray(drawn[mask]).save(mask)
    for split, names in splits.items():
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n".join(names) + "\n")


@pytest.fixture(scope="module")
def real_names(tmp_path_factory):
    """vspw_* and cityscapes_video_* registered on a generated tree (label maps prepared);
    returns {annotation file: the raw array drawn into it}."""
    datasets = tmp_path_factory.mktemp("datasets")
    rng = np.random.default_rng(0)
    vspw = str(datasets / "VSPW_480p")
    drawn = {}
    _vspw_tree(vspw, rng, drawn)
    report = prepare_vspw(vspw, ["train", "val"], get_vspw_class_names(), VSPW_NUM_SEEN)
    assert not report.problems, report.problems

    city = datasets / "cityscapes"
    for i, name in enumerate(
        ["aachen_000000_000019", "aachen_000001_000019", "bonn_000000_000019"]
    ):
        path = city / "gtFine" / "val" / name.split("_")[0] / f"{name}_gtFine_labelTrainIds.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = rng.choice(list(range(19)) + [255], size=(H // 8, W // 8))
        drawn[str(path)] = np.kron(ids, np.ones((8, 8), np.int64)).astype(np.uint8)
        Image.fromarray(drawn[str(path)]).save(path)
    (city / "leftImg8bit_sequence" / "val").mkdir(parents=True)

    register_all_vspw(str(datasets), overwrite=True)
    register_all_cityscapes_video(str(datasets), overwrite=True)
    yield drawn
    register_all_vspw(overwrite=True)
    register_all_cityscapes_video(overwrite=True)


# VSPW raw ids: 1..80 seen, 81..124 unseen (0 "others" and 255 void are ignored); each
# protocol's labels number its own classes from 0. Cityscapes trainIds are the labels.
PROTOCOL_RAW_IDS = {"seen": (1, 80), "unseen": (81, 124), "all": (1, 124)}


def _truth(drawn, name, record):
    """The labels ``record`` must be scored against, derived here from the raw array the
    fixture drew (not read from the label maps the evaluators read)."""
    if name.startswith("cityscapes"):
        return drawn[record["sem_seg_file_name"]].astype(np.int64)
    raw = drawn[record["raw_sem_seg_file_name"]].astype(np.int64)
    lo, hi = PROTOCOL_RAW_IDS[name.rsplit("_", 1)[1]]
    return np.where((raw >= lo) & (raw <= hi), raw - lo, 255)


def _one_hot(labels, num_classes):
    """Scores [C, H, W] whose argmax is ``labels`` (ignored pixels: class 0)."""
    pred = torch.as_tensor(np.where(labels == 255, 0, labels))
    return torch.nn.functional.one_hot(pred, num_classes).permute(2, 0, 1).float()


def _evaluate(evaluator, drawn, name, relabel=None):
    """Feed ``evaluator`` a predictor that is perfect up to ``relabel`` ({class: predicted})."""
    num_classes = len(MetadataCatalog.get(name).stuff_classes)
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        labels = _truth(drawn, name, record)
        pred = labels.copy()
        for c, p in (relabel or {}).items():
            pred[labels == c] = p
        inp = {k: record[k] for k in ("file_name", "video_id", "frame_index", "height", "width")}
        evaluator.process([inp], [{"sem_seg": _one_hot(pred, num_classes)}])
    return evaluator.evaluate()["sem_seg"]


def _pixel_counts(drawn, name):
    num_classes = len(MetadataCatalog.get(name).stuff_classes)
    counts = np.zeros(num_classes, np.int64)
    for record in DatasetCatalog.get(name):
        labels = _truth(drawn, name, record)
        counts += np.bincount(labels[labels != 255], minlength=num_classes)
    return counts


@pytest.mark.parametrize(
    "name, num_classes",
    [("vspw_val_unseen", 44), ("vspw_val_seen", 80), ("vspw_val_all", 124)],
)
def test_stock_sem_seg_evaluator_on_vspw(real_names, name, num_classes):
    meta = MetadataCatalog.get(name)
    assert len(meta.stuff_classes) == num_classes
    records = DatasetCatalog.get(name)
    assert len(records) == 9 and all(r["raw_sem_seg_file_name"] in real_names for r in records)
    assert all(r["sem_seg_file_name"].startswith(meta.sem_seg_root) for r in records)
    counts = _pixel_counts(real_names, name)
    present = np.flatnonzero(counts)
    assert len(present) >= 3

    stock = SemSegEvaluator(name, distributed=False)
    assert _evaluate(stock, real_names, name)["mIoU"] == 100.0

    # class k predicted as class m: IoU(k) = 0, IoU(m) = n_m / (n_m + n_k), others 1
    k, m = int(present[0]), int(present[1])
    n_k, n_m = counts[k], counts[m]
    expected = 100 * (len(present) - 2 + n_m / (n_m + n_k)) / len(present)
    res = _evaluate(stock, real_names, name, {k: m})
    assert res["mIoU"] == pytest.approx(expected, rel=1e-12)
    assert res[f"IoU-{meta.stuff_classes[k]}"] == 0.0
    assert res[f"IoU-{meta.stuff_classes[m]}"] == pytest.approx(100 * n_m / (n_m + n_k))

    # the project's evaluator reads the same label maps: the same numbers
    ours = VideoSemSegEvaluator(name, distributed=False, vc_windows=())
    assert _evaluate(ours, real_names, name)["mIoU"] == 100.0
    assert _evaluate(ours, real_names, name, {k: m})["mIoU"] == pytest.approx(expected, rel=1e-12)


def test_stock_sem_seg_evaluator_on_cityscapes_video(real_names):
    name = "cityscapes_video_val"
    records = DatasetCatalog.get(name)
    assert len(records) == 3
    assert all(r["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png") for r in records)
    stock = SemSegEvaluator(name, distributed=False)
    assert _evaluate(stock, real_names, name)["mIoU"] == 100.0
    counts = _pixel_counts(real_names, name)
    present = np.flatnonzero(counts)
    k, m = int(present[0]), int(present[-1])
    expected = 100 * (len(present) - 2 + counts[m] / (counts[m] + counts[k])) / len(present)
    assert _evaluate(stock, real_names, name, {k: m})["mIoU"] == pytest.approx(expected, rel=1e-12)


def test_stock_dataset_mapper_on_vspw_train_seen(real_names):
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="RGB")
    records = DatasetCatalog.get("vspw_train_seen")
    assert len(records) == 6
    seen_any = unseen_any = False
    for record in records:
        sem_seg = mapper(record)["sem_seg"].numpy()
        raw = np.asarray(Image.open(record["raw_sem_seg_file_name"])).astype(np.int64)
        seen = (raw >= 1) & (raw <= 80)
        assert np.array_equal(sem_seg[seen], raw[seen] - 1)  # ids 0..79
        assert (sem_seg[~seen] == 255).all()  # unseen classes, "others" and void
        assert set(np.unique(sem_seg).tolist()) <= set(range(80)) | {255}
        seen_any |= seen.any()
        unseen_any |= ((raw >= 81) & (raw <= 124)).any()
    assert seen_any and unseen_any


class _StockTrainer(DefaultTrainer):
    """What a detectron2 project writes: DefaultTrainer + the stock SemSegEvaluator."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return SemSegEvaluator(dataset_name, distributed=False, output_dir=None)


def _best_constant_miou(name):
    """mIoU of the best constant predictor on ``name`` (the most frequent class everywhere):
    IoU n_c / N for that class, 0 for the others present."""
    counts = np.zeros(len(MetadataCatalog.get(name).stuff_classes), np.int64)
    for record in DatasetCatalog.get(name):
        labels = np.asarray(Image.open(record["sem_seg_file_name"])).astype(np.int64)
        counts += np.bincount(labels[labels != 255], minlength=len(counts))
    return 100.0 * counts.max() / counts.sum() / np.count_nonzero(counts)


def test_stock_trainer_on_toy_data(toy_root, tmp_path):
    """20 iterations of a stock SemanticSegmentor (R-18, 32x48 crops) fit the toy training
    videos: the loss falls and the stock evaluator's mIoU on those videos beats the best
    constant predictor's several times over (~23 against ~2.6)."""
    register_toy(toy_root)  # conftest points the names back afterwards
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]  # RGB
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3"]
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = len(
        MetadataCatalog.get("vspw_toy_train_seen").stuff_classes
    )
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 16
    cfg.MODEL.SEM_SEG_HEAD.NORM = ""
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (48,)
    cfg.INPUT.MAX_SIZE_TRAIN = 100
    cfg.INPUT.MIN_SIZE_TEST = 48
    cfg.INPUT.MAX_SIZE_TEST = 100
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (32, 48)
    cfg.DATASETS.TRAIN = ("vspw_toy_train_seen",)
    # the videos it trained on: what a few iterations can learn (the small toy's validation
    # videos hold classes its 3 training videos never show)
    cfg.DATASETS.TEST = ("vspw_toy_train_seen",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 3e-3
    cfg.SOLVER.MAX_ITER = 20
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.TEST.EVAL_PERIOD = 0  # DefaultTrainer still evaluates after the last iteration
    cfg.SEED = 0
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.freeze()

    seed_all_rng(cfg.SEED)  # what detectron2's default_setup does with SEED
    trainer = _StockTrainer(cfg)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:2]) / 3  # ~2.6 against ~15
    # EvalHook stores SemSegEvaluator's results after the last iteration
    miou, _ = trainer.storage.latest()["sem_seg/mIoU"]
    assert miou > 3 * _best_constant_miou("vspw_toy_train_seen"), miou
