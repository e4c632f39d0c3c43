"""Multi-process training and evaluation on CPU (issue 5): `train_net.py --num-gpus 2` with
CUDA hidden runs two gloo processes under detectron2's launch; the evaluation at the end
of that run gives exactly the metrics a single process computes from its checkpoint.
One 2-process run serves all checks (spawning processes is the slow part)."""

import json
import os

import pytest
import torch
from detectron2.engine import default_argument_parser

from ov2vss.engine import create_ddp_model, launch_cli

from test_resume import REPO, parse_args, train_net  # shared tiny setup; imports train_net

EVAL_SET = "vspw_toy_val_unseen"
EVAL_OPTS = ("DATASETS.TEST", f"('{EVAL_SET}',)", "TEST.VC_WINDOWS", "[2, 3]")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """`train_net.py --num-gpus 2 --dist-url auto` with CUDA hidden: 3 iterations with 2 CPU
    processes (1 clip each), then the end-of-training evaluation."""
    from ov2vss.data.toy import generate_toy_dataset
    from test_resume import TOY

    tmp = tmp_path_factory.mktemp("ddp")
    toy_root, out = str(tmp / "VSPW_toy"), str(tmp / "out")
    generate_toy_dataset(toy_root, seed=0, **TOY)
    flags = ["--num-gpus", "2", "--dist-url", "auto"]
    args = parse_args(toy_root, out, "SOLVER.MAX_ITER", "3", *EVAL_OPTS, flags=flags)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", "")  # the spawned processes see no GPU: gloo on CPU
        mp.setenv("OMP_NUM_THREADS", "1")
        launch_cli(train_net.main, args)  # what train_net.py's __main__ runs
    yield toy_root, out
    from ov2vss.data.datasets.register_vspw_toy import register_toy

    register_toy()


def test_two_cpu_processes_train(two_process_run):
    _, out = two_process_run
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


def test_two_process_evaluation_equals_one_process(two_process_run, tmp_path):
    toy_root, out = two_process_run
    with open(os.path.join(out, "inference", EVAL_SET, "metrics.json")) as f:
        two = json.load(f)
    args = parse_args(
        toy_root, str(tmp_path), "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), *EVAL_OPTS,
        flags=["--eval-only"],
    )
    one = train_net.main(args)
    assert set(two["sem_seg"]) == set(one["sem_seg"]) and "mVC2" in one["sem_seg"]
    assert two["sem_seg"] == {k: float(v) for k, v in one["sem_seg"].items()}  # exactly
    assert 0 < one["sem_seg"]["pACC"] < 100


def test_ddp_wrapper_is_a_no_op_in_one_process():
    model = torch.nn.Linear(2, 2)
    assert create_ddp_model(model, broadcast_buffers=False) is model


def test_cli_reports_missing_data_in_one_line(tmp_path):
    """The full-size config without VSPW on disk: a one-line error, no traceback."""
    argv = [
        "--config-file", os.path.join(REPO, "configs/Base-OV2VSS.yaml"), "--eval-only",
        "MODEL.WEIGHTS", "none.pth", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path),
    ]
    from ov2vss.data.datasets.register_vspw import register_vspw_family
    from ov2vss.data.vspw_classes import VSPW_NUM_SEEN, get_vspw_class_names

    def register_vspw(datasets_root):
        root = os.path.join(datasets_root, "VSPW_480p")
        register_vspw_family("vspw", root, get_vspw_class_names(), VSPW_NUM_SEEN, overwrite=True)

    register_vspw(str(tmp_path / "no_datasets"))  # a machine without VSPW
    try:
        with pytest.raises(SystemExit) as e:
            launch_cli(train_net.main, default_argument_parser().parse_args(argv))
    finally:
        register_vspw(os.getenv("DETECTRON2_DATASETS", "datasets"))
    msg = str(e.value.code)
    assert msg.startswith("error: dataset 'vspw_val_unseen'") and "\n" not in msg
    assert "VSPW_480p" in msg
