"""Reliability of CPU training: a run killed mid-way and restarted with --resume
ends with exactly the weights of an uninterrupted run; SEED makes runs repeatable; another
SOLVER.MAX_ITER on resume does not break the schedule; SOLVER.AMP works on CPU (bf16).

The tiny config on 48x64 toy clips, a few iterations per run; the runs are shared by the
tests through module fixtures."""

import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.engine import HookBase, default_argument_parser
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ov2vss.config import get_ov2vss_cfg
from ov2vss.data.build import ResumableTrainLoader
from ov2vss.engine import StepTrainer, Trainer, build_step_trainer, setup
from ov2vss.engine.training_cost import synthetic_window
from ov2vss.errors import SetupError
from ov2vss.solver import build_lr_scheduler

MAX_ITER, PERIOD, CRASH_AT = 5, 3, 4


@pytest.fixture(scope="module")
def parse_args(tiny_config_file, tiny_train_opts):
    """``parse_args(toy_root, output_dir, *extra, flags=())``: train_net.py's arguments for the
    tiny config (photometric augmentation on, so resuming must reproduce its draws too)."""

    def parse(toy_root, output_dir, *extra, flags=()):
        argv = ["--config-file", tiny_config_file, *flags]
        opts = tiny_train_opts(toy_root, output_dir, "INPUT.COLOR_AUG_SSD", "True", *extra)
        return default_argument_parser().parse_args(argv + opts)

    return parse


class _Crash(Exception):
    pass


class _CrashBefore(HookBase):
    """Simulates a run killed during iteration ``it`` (before it completes)."""

    def __init__(self, it):
        self.it = it

    def before_step(self):
        if self.trainer.iter == self.it:
            raise _Crash(f"killed at iteration {self.it}")


class _LossLog(HookBase):
    def __init__(self):
        self.losses = {}

    def after_step(self):
        self.losses[self.trainer.iter] = self.trainer.storage.history("total_loss").latest()


@pytest.fixture(scope="module")
def train(parse_args):
    """``train(toy_root, output_dir, max_iter, resume, crash_at, workers, extra, hooks)``:
    train as `train_net.py [--resume]` does; returns (trainer, {iteration: loss})."""

    def run(
        toy_root,
        output_dir,
        max_iter=MAX_ITER,
        resume=False,
        crash_at=None,
        workers=0,
        extra=(),
        hooks=(),
    ):
        args = parse_args(
            toy_root, output_dir,
            "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", str(PERIOD), "SEED", "0",
            "DATALOADER.NUM_WORKERS", str(workers), "DATASETS.TEST", "()", *extra,
            flags=["--resume"] if resume else [],
        )  # fmt: skip
        trainer = Trainer(setup(args))
        log = _LossLog()
        crash = [_CrashBefore(crash_at)] if crash_at is not None else []
        trainer.register_hooks([log, *hooks] + crash)
        trainer.resume_or_load(resume=resume)
        if crash_at is None:
            trainer.train()
        else:
            with pytest.raises(_Crash):
                trainer.train()
        return trainer, log.losses

    return run


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(train, toy_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    trainer, losses = train(toy_root, out)
    assert trainer.iter == MAX_ITER and sorted(losses) == list(range(MAX_ITER))
    return weights(trainer), losses, out


@pytest.fixture(scope="module")
def killed(train, toy_root, tmp_path_factory):
    """A run killed during iteration 4: iterations 0-3 ran, the last checkpoint is after 2."""
    out = str(tmp_path_factory.mktemp("killed") / "run")
    _, losses = train(toy_root, out, crash_at=CRASH_AT)
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read() == "model_0000002.pth"
    return out, losses


def copy_run(run_dir, tmp_path):
    """Each resume starts from its own copy of the killed run's output directory."""
    return shutil.copytree(run_dir, str(tmp_path / "resumed"))


def test_seed_makes_training_repeatable(uninterrupted, killed):
    """Two runs with the same SEED (the killed one is the second run): bitwise equal losses
    and bitwise equal weights in their checkpoints after iteration 2."""
    ref_weights, ref_losses, ref_dir = uninterrupted
    run_dir, losses = killed
    assert losses == {i: ref_losses[i] for i in range(CRASH_AT)}
    a = torch.load(os.path.join(ref_dir, "model_0000002.pth"), weights_only=True)
    b = torch.load(os.path.join(run_dir, "model_0000002.pth"), weights_only=True)
    assert_same_weights(a["model"], b["model"])
    # the weights do move between iterations 2 and 4, so the equality above is no accident
    assert any(not torch.equal(a["model"][k], ref_weights[k]) for k in ref_weights)


def test_seed_selects_the_data(parse_args, toy_root, tmp_path):
    """Another SEED draws another data order and other augmentations."""
    from detectron2.data import DatasetCatalog

    from ov2vss.data import VideoSemSegDatasetMapper

    cfg = setup(parse_args(toy_root, str(tmp_path)))
    dicts = DatasetCatalog.get("vspw_toy_train_seen")
    mapper = VideoSemSegDatasetMapper(cfg, True)

    def first_batch(seed):
        return next(iter(ResumableTrainLoader(dicts, mapper, 2, seed=seed)))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert all(torch.equal(x["frames"], y["frames"]) for x, y in zip(a, b))
    assert any(
        x["frames"].shape != y["frames"].shape or not torch.equal(x["frames"], y["frames"])
        for x, y in zip(a, c)
    )


def test_seed_minus_one_is_drawn_stored_and_reused_on_resume(train, toy_root, tmp_path):
    """SEED -1: a seed is drawn, stored in the checkpoints, and a run resumed with SEED -1
    continues with it: iteration 3 sees the batch and step seed it saw before the kill."""
    out = str(tmp_path / "run")
    killed, losses = train(toy_root, out, crash_at=CRASH_AT, extra=("SEED", "-1"))
    drawn = killed.seed
    assert 0 <= drawn < 2**31 and killed.data_loader.seed == drawn
    ckpt = torch.load(os.path.join(out, "model_0000002.pth"), weights_only=True)
    assert ckpt["trainer"]["data"]["seed"] == drawn
    np.random.seed(1)  # what the resumed run draws before it reads the checkpoint: another seed
    assert np.random.RandomState(1).randint(2**31) != drawn
    resumed, again = train(toy_root, out, max_iter=CRASH_AT, resume=True, extra=("SEED", "-1"))
    assert resumed.start_iter == 3 and resumed.seed == resumed.data_loader.seed == drawn
    assert again == {3: losses[3]}


def test_killed_run_resumes_to_the_same_weights(train, uninterrupted, killed, tmp_path, toy_root):
    ref_weights, ref_losses, _ = uninterrupted
    out = copy_run(killed[0], tmp_path)
    trainer, losses = train(toy_root, out, resume=True)
    assert trainer.start_iter == 3 and trainer.iter == MAX_ITER
    # iteration 3 is recomputed from the checkpoint and sees the same batch as before
    assert losses == {i: ref_losses[i] for i in (3, 4)}
    assert_same_weights(weights(trainer), ref_weights)
    ckpt = torch.load(
        os.path.join(out, "model_final.pth"), weights_only=True
    )  # torch's safe default
    assert ckpt["iteration"] == MAX_ITER - 1
    assert ckpt["trainer"]["data"] == {"seed": 0, "samples_seen": 2 * MAX_ITER}


def test_resume_with_loader_workers(train, uninterrupted, killed, tmp_path, toy_root):
    """The data stream does not depend on the number of loader processes: the run killed
    with 0 workers, resumed with 2, still ends with the uninterrupted run's weights."""
    out = copy_run(killed[0], tmp_path)
    trainer, _ = train(toy_root, out, resume=True, workers=2)
    assert (
        isinstance(trainer.data_loader, ResumableTrainLoader)
        and trainer.data_loader.num_workers == 2
    )
    assert_same_weights(weights(trainer), uninterrupted[0])


def test_resume_with_a_smaller_max_iter(train, killed, tmp_path, toy_root):
    """MAX_ITER below the checkpoint's iteration: nothing left to train, no scheduler error."""
    out = copy_run(killed[0], tmp_path)
    saved = torch.load(os.path.join(out, "model_0000002.pth"), weights_only=True)["model"]
    trainer, losses = train(toy_root, out, max_iter=2, resume=True)
    assert losses == {} and trainer.start_iter == 3
    assert_same_weights({k: v for k, v in weights(trainer).items() if k in saved}, saved)


def test_resume_with_another_max_iter_follows_the_new_schedule(train, killed, tmp_path, toy_root):
    """The resumed iterations use the new poly schedule from their first step on (not the
    learning rate the checkpoint's optimizer holds from the old one)."""
    out = copy_run(killed[0], tmp_path)
    trainer, losses = train(toy_root, out, max_iter=MAX_ITER - 1, resume=True)
    assert sorted(losses) == [3]
    ((lr, it),) = trainer.storage.history("lr").values()
    # the tiny config's BASE_LR, power 0.9, warm-up over; the old schedule gave (1 - 3/5)^0.9
    base_lr = trainer.cfg.SOLVER.BASE_LR
    assert it == 3 and lr == pytest.approx(base_lr * (1 - 3 / (MAX_ITER - 1)) ** 0.9, rel=1e-6)


def test_scheduler_past_its_end_holds_the_last_value():
    """A schedule rebuilt with MAX_ITER below the checkpoint's iteration is evaluated past its
    end when stepped; it keeps the final learning rate instead of failing."""
    cfg = get_ov2vss_cfg(opts=[
        "SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.MAX_ITER", "10", "SOLVER.WARMUP_ITERS", "2",
        "SOLVER.BASE_LR", "0.1", "SOLVER.POLY_LR_CONSTANT_ENDING", "0.01",
    ])  # fmt: skip
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_lr_scheduler(cfg, opt)
    sched.load_state_dict({"base_lrs": [0.1], "last_epoch": 25})  # a checkpoint 2.5x past MAX_ITER
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.01)


# ---------------------------------------------------------------------------- mixed precision
class _DtypeProbe(HookBase):
    """Records the dtype of the backbone's output during training steps."""

    def __init__(self):
        self.dtypes = set()

    def before_train(self):
        backbone = self.trainer.model.backbone
        backbone.register_forward_hook(lambda m, i, out: self.dtypes.add(out["res5"].dtype))


def test_amp_on_cpu_trains_with_bfloat16_autocast(train, toy_root, tmp_path):
    probe = _DtypeProbe()
    amp = ("SOLVER.AMP.ENABLED", "True")
    trainer, losses = train(toy_root, str(tmp_path), max_iter=2, extra=amp, hooks=[probe])
    assert trainer._trainer.autocast == ("cpu", torch.bfloat16)  # bf16, no gradient scaler
    assert trainer._trainer.grad_scaler is None
    assert probe.dtypes == {torch.bfloat16}  # the forward ran under CPU autocast ...
    assert all(
        p.dtype == torch.float32 for p in trainer.model.parameters()
    )  # ... weights stay fp32
    assert sorted(losses) == [0, 1] and all(0 < v < 100 for v in losses.values())


def test_amp_trainer_by_device():
    """fp16 AMP with a gradient scaler on GPU; a clear error where neither applies."""
    cfg = get_ov2vss_cfg()
    cfg.SOLVER.AMP.ENABLED = True
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg.MODEL.DEVICE = "cuda"
    trainer = build_step_trainer(cfg, model, [], opt)
    assert trainer.autocast == ("cuda", torch.float16)
    assert isinstance(trainer.grad_scaler, torch.amp.GradScaler)
    cfg.MODEL.DEVICE = "meta"
    with pytest.raises(SetupError, match="supported on cuda and cpu, not MODEL.DEVICE=meta"):
        build_step_trainer(cfg, model, [], opt)


# SAM's ViT-B at a twelfth of its width, its blocks otherwise the same (windows of 14, relative
# positions): at full width one fp16 step took over a minute on the 2-core test machine (a CPU
# has no fast fp16 kernels: ~2 GFLOP/s against ~80 in fp32)
SAM_NARROW = ("MODEL.SAM_VIT.EMBED_DIM", 64, "MODEL.SAM_VIT.NUM_HEADS", 2)
CUDA_RECIPE_CONFIGS = {
    "tiny": ("configs/toy/ov2vss_tiny_cpu.yaml", ()),
    "R-50": ("configs/vspw/ov2vss_R50.yaml", ()),
    "SAM ViT-B": ("configs/vspw/ov2vss_sam_vitb.yaml", SAM_NARROW),
}


@pytest.mark.parametrize("name", sorted(CUDA_RECIPE_CONFIGS))
def test_fp16_autocast_with_a_gradient_scaler_trains(name, repo_root):
    """The CUDA recipe of SOLVER.AMP (fp16 autocast, GradScaler) as far as a CPU shows it: one
    step of the config's model on a 32x32 window (random weights, CLIP at 32 px, 4 names):
    finite loss, a gradient on every trainable parameter, finite after unscaling, no skipped
    step."""
    path, extra = CUDA_RECIPE_CONFIGS[name]
    cfg = get_ov2vss_cfg(
        os.path.join(repo_root, path),
        ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.CLIP.PRETRAINED", "",
         "MODEL.CLIP.INPUT_SIZE", 32, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", *extra],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).train()
    model.train_class_texts = ["road", "sky", "car", "tree"]
    with torch.no_grad():  # a frozen text tower: encoded once, as in training
        model.clip.encode_vocabulary(model.train_class_texts)
    # VTE's zero-initialised residuals would block the gradient of the layers before them
    torch.nn.init.normal_(model.vte.attn.out_proj.weight, std=0.02)
    torch.nn.init.normal_(model.vte.ffn[-1].weight, std=0.02)
    window = synthetic_window(4, (32, 32), num_classes=4, seed=1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.0)  # the step itself is GradScaler's
    scaler = torch.amp.GradScaler("cpu")
    trainer = StepTrainer(
        model, iter([[window]]), optimizer, autocast=("cpu", torch.float16), grad_scaler=scaler
    )
    dtypes = set()  # of what the backbone's convolutions and linear layers compute
    for layer in model.backbone.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            layer.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
    with EventStorage(0) as storage:
        trainer.storage, trainer.iter = storage, 0
        trainer.run_step()
        loss = storage.history("total_loss").latest()
    assert torch.float16 in dtypes and 0 < loss < 100  # the forward ran under fp16 autocast
    # every parameter is reached; all but the decoder's last bias, which shifts every class's
    # logit alike (the softmax ignores it: its exact gradient is 0), get a non-zero gradient
    assert all(p.grad is not None for p in trainable)
    dead = [n for n, p in model.named_parameters() if p.requires_grad and not p.grad.any()]
    assert set(dead) <= {"head.decoder.3.bias"}, f"no gradient reaches {dead}"
    assert all(torch.isfinite(p.grad).all() for p in trainable)  # unscaled by the step
    assert scaler.get_scale() == 65536.0  # no inf found: the step was not skipped


# ---------------------------------------------------------------------------- accumulation
ACCUMULATE = ("SOLVER.ACCUMULATE_STEPS", "2")


@pytest.fixture(scope="module")
def accumulated(train, toy_root, tmp_path_factory):
    """SOLVER.ACCUMULATE_STEPS 2, MAX_ITER 5: optimizer steps after iterations 1, 3 and 4
    (the last group is cut short). The run killed during iteration 4 has its last checkpoint
    after iteration 2, in the middle of the group of iterations 2-3."""
    full, _ = train(toy_root, str(tmp_path_factory.mktemp("acc_full")), extra=ACCUMULATE)
    killed_dir = str(tmp_path_factory.mktemp("acc_killed") / "run")
    train(toy_root, killed_dir, crash_at=CRASH_AT, extra=ACCUMULATE)
    return weights(full), killed_dir


def test_resume_in_the_middle_of_an_accumulation_group(
    train, accumulated, uninterrupted, tmp_path, toy_root
):
    """The mid-group checkpoint holds the partial gradients of iteration 2; the resumed run
    adds iteration 3's to them and ends bitwise where the uninterrupted run ends."""
    ref, killed_dir = accumulated
    assert any(not torch.equal(ref[k], uninterrupted[0][k]) for k in ref)  # accumulation is on
    ckpt = torch.load(os.path.join(killed_dir, "model_0000002.pth"), weights_only=True)
    acc = ckpt["trainer"]["_trainer"]["accumulation"]
    assert acc["group_start"] == 2 and len(acc["grads"]) > 0
    out = copy_run(killed_dir, tmp_path)
    trainer, losses = train(toy_root, out, resume=True, extra=ACCUMULATE)
    assert trainer.start_iter == 3 and sorted(losses) == [3, 4]
    assert_same_weights(weights(trainer), ref)
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert "accumulation" not in final["trainer"]["_trainer"]  # ends on a complete group


def test_resume_mid_group_needs_the_saved_gradients(train, accumulated, tmp_path, toy_root, caplog):
    """Control: without the stored partial gradients, the step after iteration 3 misses
    iteration 2's micro-batch, the weights differ and a warning says so."""
    ref, killed_dir = accumulated
    out = copy_run(killed_dir, tmp_path)
    path = os.path.join(out, "model_0000002.pth")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["trainer"]["_trainer"]["accumulation"]
    torch.save(ckpt, path)
    trainer, _ = train(toy_root, out, resume=True, extra=ACCUMULATE)
    assert any(not torch.equal(v, ref[k]) for k, v in weights(trainer).items())
    assert "holds no gradients of iterations 2-2" in caplog.text


def test_initial_weights_depend_on_the_seed_only(parse_args, toy_root, tmp_path):
    """The model's initialisation is drawn from SEED, whatever consumed the global random
    generators before (e.g. generating data or evaluating a baseline first)."""

    def initial(name, seed):
        args = parse_args(toy_root, str(tmp_path / name), "SEED", str(seed), "DATASETS.TEST", "()")
        return Trainer(setup(args)).model.state_dict()

    a = initial("a", 0)
    torch.rand(1000)
    b = initial("b", 0)
    c = initial("c", 1)
    assert_same_weights(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
