"""Multi-process training and evaluation on CPU: train_net.py's main in two gloo processes;
the evaluation at the end of that run streams whole videos per process and gives exactly the
metrics a single process computes from its checkpoint. One 2-process run serves all checks.

The two processes are forked from this one with torchrun's environment (train_net.py under
``torchrun --nproc-per-node 2``, without starting Python twice more); test_preemption.py runs
the launchers themselves as commands: ``train_net.py --num-gpus 2`` (detectron2's launch) and
``torchrun``, each compared with such a forked run."""

import importlib
import json
import os

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser

import ov2vss.evaluation.streaming as streaming
from ov2vss.checkpoint import OV2VSSCheckpointer
from ov2vss.data.datasets.register_vspw_toy import register_toy
from ov2vss.engine import Trainer, create_ddp_model, launch_cli

EVAL_SET = "vspw_toy_val_unseen"
EVAL_OPTS = ("DATASETS.TEST", f"('{EVAL_SET}',)", "TEST.VC_WINDOWS", "[2, 3]")


def _train_net_rank(args):
    """One process of `train_net.py ARGS` under torchrun, with CUDA hidden (gloo on CPU)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    train_net = importlib.import_module("train_net")  # pyproject.toml: the checkout's path
    launch_cli(train_net.main, args)


@pytest.fixture(scope="module")
def two_process_run(toy_root, tiny_config_file, tiny_train_opts, fork_ranks, tmp_path_factory):
    """`train_net.py` in 2 CPU processes: 3 iterations (1 window each per iteration), then
    the end-of-training evaluation."""
    out = str(tmp_path_factory.mktemp("ddp") / "out")
    opts = tiny_train_opts(toy_root, out, "INPUT.COLOR_AUG_SSD", "True", "SOLVER.MAX_ITER", "3")
    args = default_argument_parser().parse_args(
        ["--config-file", tiny_config_file, *opts, *EVAL_OPTS]
    )
    assert fork_ranks(_train_net_rank, args) == [0, 0]
    return out


def test_two_cpu_processes_train(two_process_run):
    out = two_process_run
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "World size: 2" in log
    assert "Starting training from iteration 0" in log
    with open(os.path.join(out, "metrics.json")) as f:
        iters = [json.loads(line) for line in f if '"total_loss"' in line]
    assert iters and iters[-1]["iteration"] == 2
    assert all(0 < m["total_loss"] < 100 for m in iters)
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert ckpt["iteration"] == 2 and ckpt["trainer"]["data"]["samples_seen"] == 6
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped


def test_two_process_evaluation_equals_one_process(
    two_process_run, toy_root, tiny_cfg, tiny_train_opts, tmp_path
):
    """The end-of-training evaluation streams whole videos in each process (TEST.STREAMING):
    rank 0 two of the 3 validation videos, rank 1 the third; merged, the metrics are exactly
    those of one process evaluating the checkpoint here (each frame is computed alike,
    whichever process streams it)."""
    out = two_process_run
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    register_toy(toy_root)  # conftest points the names back afterwards
    videos = streaming.group_videos(DatasetCatalog.get(EVAL_SET))
    owners = streaming.assign_videos([len(v.records) for v in videos], 2)
    assert sorted(set(owners)) == [0, 1]
    rank0 = sum(len(v.records) for v, r in zip(videos, owners) if r == 0)
    assert f"Evaluated {EVAL_SET} (process 0 of 2): {rank0}/{rank0} frames" in log
    with open(os.path.join(out, "inference", EVAL_SET, "metrics.json")) as f:
        two = json.load(f)

    weights = os.path.join(out, "model_final.pth")
    cfg = tiny_cfg(*tiny_train_opts(toy_root, tmp_path, "MODEL.WEIGHTS", weights, *EVAL_OPTS))
    model = Trainer.build_model(cfg)
    OV2VSSCheckpointer(model, strict=True, config=cfg).resume_or_load(weights, resume=False)
    Trainer.test(cfg, model)  # what `train_net.py --eval-only` runs, in this process
    with open(os.path.join(tmp_path, "inference", EVAL_SET, "metrics.json")) as f:
        one = json.load(f)
    assert set(two["sem_seg"]) == set(one["sem_seg"]) and "mVC3" in one["sem_seg"]
    assert two["sem_seg"] == one["sem_seg"]  # exactly
    assert 0 < one["sem_seg"]["pACC"] < 100


def test_ddp_wrapper_is_a_no_op_in_one_process():
    model = torch.nn.Linear(2, 2)
    assert create_ddp_model(model, broadcast_buffers=False) is model
