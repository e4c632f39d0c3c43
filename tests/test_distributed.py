"""Multi-process training and evaluation on CPU: `train_net.py --num-gpus 2` with CUDA
hidden runs two gloo processes under detectron2's launch; the evaluation at the end of that
run gives exactly the metrics a single process computes from its checkpoint.
One 2-process run serves all checks (spawning processes is the slow part)."""

import json
import os

import pytest
import torch

from ov2vss.engine import create_ddp_model

EVAL_SET = "vspw_toy_val_unseen"
EVAL_OPTS = ("DATASETS.TEST", f"('{EVAL_SET}',)", "TEST.VC_WINDOWS", "[2, 3]")


@pytest.fixture(scope="module")
def two_process_run(toy_root, tiny_config_file, tiny_train_opts, run_train_net, tmp_path_factory):
    """`train_net.py --num-gpus 2 --dist-url auto` with CUDA hidden: 3 iterations with 2 CPU
    processes (1 window each), then the end-of-training evaluation."""
    out = str(tmp_path_factory.mktemp("ddp") / "out")
    opts = tiny_train_opts(toy_root, out, "INPUT.COLOR_AUG_SSD", "True", "SOLVER.MAX_ITER", "3")
    flags = ["--num-gpus", "2", "--dist-url", "auto"]
    # the spawned processes see no GPU: gloo on CPU
    run_train_net(
        "--config-file",
        tiny_config_file,
        *flags,
        *opts,
        *EVAL_OPTS,
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
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
    two_process_run, toy_root, tiny_config_file, tiny_train_opts, run_train_net, tmp_path
):
    out = two_process_run
    with open(os.path.join(out, "inference", EVAL_SET, "metrics.json")) as f:
        two = json.load(f)
    weights = os.path.join(out, "model_final.pth")
    opts = tiny_train_opts(toy_root, tmp_path, "MODEL.WEIGHTS", weights, *EVAL_OPTS)
    run_train_net("--config-file", tiny_config_file, "--eval-only", *opts)
    with open(os.path.join(tmp_path, "inference", EVAL_SET, "metrics.json")) as f:
        one = json.load(f)
    assert set(two["sem_seg"]) == set(one["sem_seg"]) and "mVC2" in one["sem_seg"]
    assert two["sem_seg"] == one["sem_seg"]  # exactly
    assert 0 < one["sem_seg"]["pACC"] < 100


def test_ddp_wrapper_is_a_no_op_in_one_process():
    model = torch.nn.Linear(2, 2)
    assert create_ddp_model(model, broadcast_buffers=False) is model
