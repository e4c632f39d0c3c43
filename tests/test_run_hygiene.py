"""Nothing silently wrong, nothing lost: strict checkpoints, flags among the overrides, stale
temporary files, checkpoint permissions, and one live run per OUTPUT_DIR."""

import importlib
import multiprocessing
import os
import signal
import stat
import time

import pytest
import torch
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

from ov2vss.checkpoint import OV2VSSCheckpointer
from ov2vss.checkpoint_io import CheckpointError, atomic_torch_save
from ov2vss.engine import Trainer, launch_cli, setup
from ov2vss.engine.setup import check_overrides, lock_output_dir
from ov2vss.errors import SetupError

SMALL = ("MODEL.CLIP.INPUT_SIZE", 32, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()")
VOCAB = ("MODEL.OV2VSS.TEST_VOCABULARY", ["red circle", "blue star"])


@pytest.fixture(scope="module")
def wide_checkpoint(tiny_cfg, tmp_path_factory):
    """A checkpoint of the tiny model trained with HIDDEN_DIM 64 (its config saved in it)."""
    cfg = tiny_cfg(*SMALL, *VOCAB, "MODEL.OV2VSS.HIDDEN_DIM", 64)
    model = build_model(cfg)
    out = tmp_path_factory.mktemp("wide")
    OV2VSSCheckpointer(model, str(out), config=cfg).save("model_final")
    return str(out / "model_final.pth")


def test_a_mismatched_checkpoint_is_refused_with_the_config_it_needs(wide_checkpoint, tiny_cfg):
    cfg = tiny_cfg(*SMALL, *VOCAB, "MODEL.OV2VSS.HIDDEN_DIM", 32)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        OV2VSSCheckpointer(model, strict=True, config=cfg).load(wide_checkpoint)
    msg = str(e.value)
    assert msg.startswith(f"checkpoint file {wide_checkpoint} does not match the model")
    assert "tensors differ" in msg and "with another shape" in msg and "lateral." in msg
    assert "MODEL.OV2VSS.HIDDEN_DIM: 64 there, 32 here" in msg
    # refused before anything was loaded: the model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture(scope="module", autouse=True)
def eval_only_command(wide_checkpoint, tiny_config_file, start_command, tmp_path_factory):
    """`python train_net.py --eval-only` with the mismatched checkpoint, a real command line
    (a fresh process's output), started with the module: its other tests run meanwhile."""
    return start_command(
        "python", "train_net.py", "--config-file", tiny_config_file, "--eval-only",
        "MODEL.WEIGHTS", wide_checkpoint, "MODEL.OV2VSS.HIDDEN_DIM", 32, *SMALL,
        "OUTPUT_DIR", tmp_path_factory.mktemp("eval_only"),
    )  # fmt: skip


def test_without_a_saved_config_the_hint_names_config_yaml_beside_it(tiny_cfg, tmp_path):
    cfg64 = tiny_cfg(*SMALL, *VOCAB, "MODEL.OV2VSS.HIDDEN_DIM", 64)
    torch.save({"model": build_model(cfg64).state_dict()}, tmp_path / "model.pth")
    (tmp_path / "config.yaml").write_text(cfg64.dump())
    cfg = tiny_cfg(*SMALL, *VOCAB, "MODEL.OV2VSS.HIDDEN_DIM", 32)
    with pytest.raises(CheckpointError) as e:
        OV2VSSCheckpointer(build_model(cfg), strict=True, config=cfg).load(
            str(tmp_path / "model.pth")
        )
    assert f"probably trained with {tmp_path / 'config.yaml'}" in str(e.value)
    assert "MODEL.OV2VSS.HIDDEN_DIM: 64 there, 32 here" in str(e.value)


def test_a_checkpoint_with_missing_tensors_is_refused(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*SMALL, *VOCAB)
    model = build_model(cfg)
    state = model.state_dict()
    dropped = sorted(k for k in state if k.startswith("head."))
    torch.save({"model": {k: v for k, v in state.items() if k not in dropped}}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=rf"{len(dropped)} tensors differ.*missing.*head\."):
        OV2VSSCheckpointer(model, strict=True).load(str(tmp_path / "m.pth"))


def test_training_from_a_backbone_file_needs_every_backbone_tensor(tiny_cfg, tmp_path):
    """Non-strict loading (initialisation for training) takes the backbone only, but a
    backbone tensor the file lacks is an error naming it."""
    model = build_model(tiny_cfg(*SMALL, *VOCAB))
    backbone = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    torch.save({"model": backbone}, tmp_path / "backbone.pth")
    OV2VSSCheckpointer(model).load(str(tmp_path / "backbone.pth"))  # the rest stays as it is
    missing = sorted(backbone)[0]
    torch.save({"model": {k: v for k, v in backbone.items() if k != missing}}, tmp_path / "b2.pth")
    with pytest.raises(CheckpointError, match=rf"backbone needs tensors.*{missing}"):
        OV2VSSCheckpointer(model).load(str(tmp_path / "b2.pth"))


def test_resume_is_strict(wide_checkpoint, tiny_config_file, tiny_train_opts, toy_root, tmp_path):
    """--resume finds a checkpoint of another architecture in OUTPUT_DIR: refused."""
    out = tmp_path / "run"
    out.mkdir()
    os.link(wide_checkpoint, out / "model_final.pth")
    (out / "last_checkpoint").write_text("model_final.pth")
    argv = ["--config-file", tiny_config_file, "--resume"]
    args = default_argument_parser().parse_args(
        argv
        + tiny_train_opts(toy_root, out, "MODEL.OV2VSS.HIDDEN_DIM", "32", "DATASETS.TEST", "()")
    )
    trainer = Trainer(setup(args))
    with pytest.raises(CheckpointError, match="MODEL.OV2VSS.HIDDEN_DIM: 64 there, 32 here"):
        trainer.resume_or_load(resume=True)


def test_a_flag_among_the_overrides_says_where_it_goes(tiny_config_file, tmp_path):
    with pytest.raises(
        SetupError, match="--resume found among the config overrides.*flags go before"
    ):
        check_overrides(["SOLVER.MAX_ITER", "10", "--resume"])
    check_overrides(["SOLVER.MAX_ITER", "10", "MODEL.WEIGHTS", "-1.pth"])
    # train_net.py's main under its launcher, in this process: the one line it exits with
    train_net = importlib.import_module("train_net")  # pyproject.toml: the checkout's path
    argv = ["--config-file", tiny_config_file, "OUTPUT_DIR", str(tmp_path), "--resume"]
    with pytest.raises(SystemExit) as e:
        launch_cli(train_net.main, default_argument_parser().parse_args(argv))
    assert str(e.value.code).startswith("error: --resume found among the config overrides")


def test_stale_temp_files_are_removed_and_checkpoints_follow_the_umask(
    tiny_config_file, tiny_train_opts, toy_root, tmp_path
):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".model_0000002.pth.k3j9x_2a.tmp"  # what a SIGKILL during a save leaves
    stale.write_bytes(b"")
    keep = out / "notes.tmp"
    keep.write_text("not ours")
    argv = ["--config-file", tiny_config_file] + tiny_train_opts(toy_root, out)
    setup(default_argument_parser().parse_args(argv))
    assert not stale.exists() and keep.exists()

    old = os.umask(0o022)
    try:
        atomic_torch_save({"x": torch.zeros(1)}, str(out / "model.pth"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out / "model.pth").st_mode) == 0o644


def _hold_the_lock(output_dir: str, ready) -> None:
    lock_output_dir(output_dir)
    ready.send("locked")
    time.sleep(60)


def test_one_live_run_per_output_dir(tmp_path):
    out = str(tmp_path / "run")
    # another process holding the lock: a fork of this one (no Python start, no imports)
    ready, child_end = multiprocessing.Pipe()
    holder = multiprocessing.get_context("fork").Process(
        target=_hold_the_lock, args=(out, child_end), daemon=True
    )
    holder.start()
    try:
        assert ready.poll(60) and ready.recv() == "locked"
        with pytest.raises(
            SetupError, match=rf"OUTPUT_DIR .*run is in use by another run \(process {holder.pid}\)"
        ):
            lock_output_dir(out)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a crashed run ...
        holder.join()
    lock_output_dir(out)  # ... leaves no lock behind


def test_an_unwritable_output_dir_is_named_before_any_work():
    with pytest.raises(SetupError, match="OUTPUT_DIR /sys/ov2vss_out cannot be written"):
        lock_output_dir("/sys/ov2vss_out")


# the command started with the module: last, its other tests ran meanwhile
def test_eval_only_refuses_a_mismatched_checkpoint_in_one_line(wide_checkpoint, eval_only_command):
    """The command's one error line (the tests of train_net.py's other errors check them
    in-process, through the same launcher)."""
    proc = eval_only_command()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and wide_checkpoint in errors[0], proc.stderr[-3000:]
    assert "MODEL.OV2VSS.HIDDEN_DIM: 64 there, 32 here" in errors[0]
    assert "Skip loading parameter" not in proc.stdout + proc.stderr
    # third-party notices that do not apply: open_clip's random init (MODEL.CLIP.PRETRAINED ""
    # asks for it), fvcore's use of torch.jit.script
    assert "No pretrained weights loaded" not in proc.stderr, proc.stderr[-3000:]
    assert "torch.jit.script` is deprecated" not in proc.stderr, proc.stderr[-3000:]
