"""train_net.py end to end on a tiny generated toy dataset, and the shipped configs.

A few iterations through train_net.main (Trainer) save a checkpoint; ``--eval-only`` from
that checkpoint must reproduce the end-of-training metrics exactly. Missing data gives a
one-line error, not a traceback.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys
from typing import Any, Dict

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.modeling import BACKBONE_REGISTRY

import ov2vss  # noqa: F401  (registers datasets and the model)
from ov2vss import add_ov2vss_config
from ov2vss.data.datasets.register_cityscapes_video import register_cityscapes_video
from ov2vss.data.datasets.register_vspw_toy import register_toy
from ov2vss.data.toy import generate_toy_dataset
from ov2vss.engine import SetupError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "toy", "ov2vss_tiny_cpu.yaml")
TOY_TESTS = ("vspw_toy_val_unseen", "vspw_toy_val_seen", "vspw_toy_val_all")
MAX_ITER = 3


def load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_net = load_train_net()


def run_main(*argv) -> Any:
    return train_net.main(default_argument_parser().parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toy") / "VSPW_toy")
    # 2 val videos x 5 objects show all 8 unseen classes; 48 x 64 frames, 4-5 per video
    generate_toy_dataset(
        root, num_train_videos=2, num_val_videos=2, frames_per_video=(4, 5), image_size=(48, 64), objects_per_video=(2, 5)
    )
    yield root
    register_toy()  # the toy names point back to the default root for the other test files


def tiny_opts(toy_root: str, output_dir) -> list:
    return [
        "DATASETS.TOY.ROOT", toy_root,
        "OUTPUT_DIR", output_dir,
        "SOLVER.MAX_ITER", MAX_ITER,
        "SOLVER.IMS_PER_BATCH", 2,
        "SOLVER.WARMUP_ITERS", 1,
        "INPUT.MIN_SIZE_TRAIN", "(48,)",
        "INPUT.MAX_SIZE_TRAIN", 200,
        "INPUT.CROP.SIZE", "(32, 48)",
        "INPUT.MIN_SIZE_TEST", 48,
        "INPUT.MAX_SIZE_TEST", 200,
        "MODEL.CLIP.INPUT_SIZE", 32,
        "MODEL.OV2VSS.HIDDEN_DIM", 32,
        "DATALOADER.NUM_WORKERS", 0,
    ]  # fmt: skip


def without_nan(metrics: Dict[str, float]) -> Dict[str, Any]:
    """metrics.json writes NaN (class absent from the ground truth) as null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


def read_metrics(output_dir, dataset: str) -> Dict[str, Any]:
    with open(os.path.join(str(output_dir), "inference", dataset, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)["sem_seg"]


def test_train_then_eval_only_reproduces_the_metrics(toy_root, tmp_path):
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    run_main("--config-file", TINY_CONFIG, *tiny_opts(toy_root, train_dir))

    # checkpoint of the last iteration
    final = train_dir / "model_final.pth"
    assert final.is_file()
    assert (train_dir / "last_checkpoint").read_text().strip() == "model_final.pth"
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == MAX_ITER - 1
    assert any(k.startswith("head.") for k in ckpt["model"])

    # the training loss was logged and finite at every iteration
    with open(train_dir / "metrics.json", encoding="utf-8") as f:
        logged = [json.loads(line) for line in f if line.strip()]
    losses = [r["total_loss"] for r in logged if "total_loss" in r]
    assert losses and all(math.isfinite(v) for v in losses)

    # end-of-training evaluation on every test split, each with its own vocabulary (8, 28, 36)
    at_end = {name: read_metrics(train_dir, name) for name in TOY_TESTS}
    assert sum(k.startswith("IoU-") for k in at_end["vspw_toy_val_unseen"]) == 8
    assert sum(k.startswith("IoU-") for k in at_end["vspw_toy_val_all"]) == 36
    assert 0.0 <= at_end["vspw_toy_val_all"]["pACC"] <= 100.0
    assert "hIoU" in at_end["vspw_toy_val_all"]

    res = run_main("--config-file", TINY_CONFIG, "--eval-only", "MODEL.WEIGHTS", final, *tiny_opts(toy_root, eval_dir))
    assert list(res) == list(TOY_TESTS)
    for name in TOY_TESTS:
        assert without_nan(res[name]["sem_seg"]) == at_end[name], name
        assert read_metrics(eval_dir, name) == at_end[name]


def test_eval_only_with_a_missing_checkpoint(toy_root, tmp_path):
    missing = tmp_path / "nowhere" / "model_final.pth"
    with pytest.raises(SetupError, match=f"MODEL.WEIGHTS.*{missing}"):
        run_main("--config-file", TINY_CONFIG, "--eval-only", "MODEL.WEIGHTS", missing, *tiny_opts(toy_root, tmp_path))


def test_missing_vspw_is_a_one_line_error(tmp_path):
    """The command of the issue's "done when", run on a machine without the data."""
    empty = tmp_path / "datasets"
    empty.mkdir()
    env = dict(os.environ, DETECTRON2_DATASETS=str(empty), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, os.path.join(REPO, "train_net.py"),
        "--config-file", os.path.join(REPO, "configs", "vspw", "ov2vss_R101.yaml"),
        "--eval-only", "MODEL.WEIGHTS", "none.pth", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, proc.stderr
    assert os.path.join(str(empty), "VSPW_480p") in errors[0] and "datasets/README.md" in errors[0]


def test_missing_cityscapes_is_a_clear_error(tmp_path):
    name = "cityscapes_video_val"
    old_root = MetadataCatalog.get(name).dataset_root
    root = str(tmp_path / "cityscapes")
    register_cityscapes_video(name, root, "val", overwrite=True)
    try:
        with pytest.raises(SetupError, match=f"{name}.*{root}.*datasets/README.md"):
            run_main(
                "--config-file", os.path.join(REPO, "configs", "cityscapes", "ov2vss_vitb16.yaml"),
                "--eval-only", "MODEL.WEIGHTS", "none.pth", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", tmp_path / "out",
            )  # fmt: skip
    finally:
        register_cityscapes_video(name, old_root, "val", overwrite=True)


# ---------------------------------------------------------------------------------- configs
def load_config(path: str):
    cfg = get_cfg()
    add_ov2vss_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, path))
    return cfg


@pytest.mark.parametrize(
    "path",
    [
        "configs/vspw/ov2vss_R101.yaml",
        "configs/vspw/ov2vss_R50.yaml",
        "configs/vspw/ov2vss_vitb16.yaml",
        "configs/cityscapes/ov2vss_R101.yaml",
        "configs/cityscapes/ov2vss_vitb16.yaml",
    ],
)
def test_paper_configs_have_the_paper_hyper_parameters(path):
    """SPEC section 3: batch 4, 100k iterations, AdamW lr 3e-6 (new modules x10), wd 1e-2,
    1500 linear warm-up iterations then poly, crop 480, 480p single-scale test on VSPW."""
    cfg = load_config(path)
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.MAX_ITER, s.OPTIMIZER, s.BASE_LR, s.WEIGHT_DECAY) == (4, 100000, "ADAMW", 3e-6, 1e-2)
    assert (s.HEAD_MULTIPLIER, s.LR_SCHEDULER_NAME, s.WARMUP_METHOD, s.WARMUP_ITERS) == (10.0, "WarmupPolyLR", "linear", 1500)
    assert cfg.INPUT.CROP.ENABLED and tuple(cfg.INPUT.CROP.SIZE) == (480, 480)
    assert list(cfg.INPUT.CLIP.REFERENCE_OFFSETS) == [9, 6, 3]
    assert cfg.DATASETS.TRAIN == ("vspw_train_seen",)
    assert cfg.MODEL.BACKBONE.NAME in BACKBONE_REGISTRY
    if path.startswith("configs/vspw/"):
        assert cfg.DATASETS.TEST == ("vspw_val_unseen",)
        assert cfg.INPUT.MIN_SIZE_TEST == 480
    else:
        assert cfg.DATASETS.TEST == ("cityscapes_video_val",)
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (1024, 2048)
        # evaluates the checkpoint its VSPW config writes
        vspw = load_config(path.replace("cityscapes/", "vspw/"))
        assert cfg.MODEL.WEIGHTS == os.path.join(vspw.OUTPUT_DIR, "model_final.pth")
    if "vitb16" in path:
        assert cfg.MODEL.BACKBONE.NAME == "build_clip_vit_backbone"
        assert (cfg.MODEL.CLIP.ARCH, cfg.MODEL.CLIP.PRETRAINED) == ("ViT-B-16", "openai")
        clip_mean = [0.48145466, 0.4578275, 0.40821073]
        assert cfg.MODEL.PIXEL_MEAN == pytest.approx([255 * m for m in clip_mean])
    else:
        assert cfg.MODEL.RESNETS.DEPTH == (50 if "R50" in path else 101)
        assert cfg.MODEL.WEIGHTS.endswith(".pkl") or path.startswith("configs/cityscapes/")
