"""Training that survives preemption (docs/GETTING_STARTED.md, "Preemption, SLURM,
Kubernetes"): SIGTERM stops every process at one iteration with a checkpoint there and exit
status 75, and ``--resume`` ends with exactly the weights of an uninterrupted run; torchrun
runs train_net.py like detectron2's launch, and a group it restarts resumes by itself.

Cheap by construction: the 1-process runs are in this process; the 2-process runs that do not
test a launcher are forked from this process with torchrun's environment (the code path of a
torchrun worker, without a second start-up of Python). Only the launchers themselves run as
commands: ``train_net.py --num-gpus 2`` and ``torchrun``, started with the module (their
processes spend most of their time starting Python; the other tests run meanwhile), each
signalled by a thread of its own at its moment. All 2-process runs are compared with one
uninterrupted forked reference that checkpoints every iteration."""

import glob
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.distributed as dist
from detectron2.engine import HookBase, default_argument_parser
from detectron2.utils.events import EventStorage
from torch import nn

import ov2vss.checkpoint
from ov2vss.checkpoint import OV2VSSCheckpointer
from ov2vss.engine import (
    EXIT_STOPPED,
    StepTrainer,
    Trainer,
    TrainingStopped,
    check_eval_weights,
    launch_cli,
    setup,
)

MAX_ITER, STOP_AT = 4, 2
LINE = "stopped at iteration {} by SIGTERM; continue with --resume"


# ---------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def parse_args(tiny_config_file, tiny_train_opts, toy_root):
    """``parse_args(output_dir, *extra, flags=())``: train_net.py's arguments, MAX_ITER
    iterations of the tiny config, no evaluation."""

    def parse(output_dir, *extra, flags=()):
        opts = tiny_train_opts(
            toy_root, output_dir, "SOLVER.MAX_ITER", MAX_ITER, "SEED", 0, "DATASETS.TEST", "()",
            "SOLVER.CHECKPOINT_PERIOD", 100, *extra,
        )  # fmt: skip
        return default_argument_parser().parse_args(
            ["--config-file", tiny_config_file, *flags, *opts]
        )

    return parse


class _SignalAt(HookBase):
    """Sends ``signum`` to this process before iteration ``it`` (a real signal at a
    deterministic point), and the stop signals to its loader workers one iteration earlier
    (as a signal to the whole process group would)."""

    def __init__(self, it, signum=signal.SIGTERM):
        self.it, self.signum = it, signum

    def before_step(self):
        if self.trainer.iter == self.it - 1:
            for child in multiprocessing.active_children():
                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                    os.kill(child.pid, s)
        if self.trainer.iter == self.it:
            # never let the default action end the test process itself
            assert signal.getsignal(self.signum) not in (signal.SIG_DFL, None), "no handler"
            os.kill(os.getpid(), self.signum)


def train(args, hooks=()):
    """What train_net.py's main does for training, with extra hooks."""
    trainer = Trainer(setup(args))
    trainer.register_hooks(list(hooks))
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    return trainer


def model_weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def stop_lines(path):
    with open(path) as f:
        return [line.rstrip() for line in f if "stopped at iteration" in line]


def _train_as_rank(args, signal_rank=None):
    hooks = [_SignalAt(STOP_AT)] if int(os.environ.get("RANK", 0)) == signal_rank else []
    launch_cli(lambda a: train(a, hooks), args)


class _Launcher:
    """A launcher subprocess in its own process group; its output is read as it comes."""

    def __init__(self, cmd):
        env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip
        self.lines, self._new = [], threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()

    def wait_for(self, text, timeout=300):
        with self._new:
            ok = self._new.wait_for(
                lambda: any(text in line for line in self.lines) or self.proc.poll() is not None,
                timeout,
            )
        assert ok and any(text in line for line in self.lines), f"no {text!r}:\n{self.output}"

    def wait_for_log(self, path, text, timeout=300):
        """``text`` in the log file ``path`` (a process whose output is not on the console)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if os.path.isfile(path):
                with open(path) as f:
                    if text in f.read():
                        return
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in {path}:\n{self.output}")

    def then(self, action, *conditions):
        """In a thread: wait for each of ``conditions`` (calls of the ``wait_for*`` methods),
        then ``action()``; :meth:`finish` reports a failure of either."""

        def watch():
            try:
                for condition in conditions:
                    condition()
                action()
            except BaseException as e:  # noqa: B036  (reported by finish)
                self._watch_error = e

        self._watch_error = None
        self._watcher = threading.Thread(target=watch, daemon=True)
        self._watcher.start()

    def finish(self, timeout=300):
        """The exit status, once the process and the :meth:`then` thread have ended."""
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        # the reader takes the last lines: the output ends once the launcher and its
        # children have all exited
        self._reader.join(60)
        if getattr(self, "_watcher", None) is not None:
            self._watcher.join()
            if self._watch_error is not None:
                raise self._watch_error
        return self.proc.returncode

    @property
    def output(self):
        return "".join(self.lines)


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _environ(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e]
    return {k.decode(): v.decode() for k, v in pairs}


# ---------------------------------------------------------------------------- one process
@pytest.fixture(scope="module")
def one_process(parse_args, tmp_path_factory):
    """An uninterrupted run; a run (1 loader worker) that gets SIGTERM during iteration
    STOP_AT and a second signal (SIGINT) while its checkpoint is written; its --resume."""
    ref = train(parse_args(tmp_path_factory.mktemp("ref1")))
    out = str(tmp_path_factory.mktemp("stop1") / "run")
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    write = ov2vss.checkpoint.atomic_torch_save

    def write_interrupted(*a, **k):
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler, "no handler"
        os.kill(os.getpid(), signal.SIGINT)
        return write(*a, **k)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(TrainingStopped) as stopped:
        mp.setattr(ov2vss.checkpoint, "atomic_torch_save", write_interrupted)
        train(parse_args(out, "DATALOADER.NUM_WORKERS", 1), [_SignalAt(STOP_AT)])
    after = {s: signal.getsignal(s) for s in before}
    workers_left = multiprocessing.active_children()
    resumed = train(parse_args(str(shutil.copytree(out, out + "_resumed")), flags=["--resume"]))
    return ref, out, stopped.value, (before, after), workers_left, resumed


def test_sigterm_stops_one_process_with_a_checkpoint(one_process):
    _, out, stopped, (before, after), workers_left, _ = one_process
    assert (stopped.code, stopped.iteration, stopped.signum) == (75, STOP_AT, signal.SIGTERM)
    assert EXIT_STOPPED == 75
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read() == f"model_{STOP_AT:07d}.pth"
    # the second signal (SIGINT, during the write) neither interrupted nor corrupted it
    ckpt = torch.load(os.path.join(out, f"model_{STOP_AT:07d}.pth"), weights_only=True)
    assert ckpt["iteration"] == STOP_AT and ckpt["trainer"]["data"]["samples_seen"] == 6
    assert glob.glob(f"{out}/model_*") == [f"{out}/model_{STOP_AT:07d}.pth"]  # no temp file
    (line,) = stop_lines(f"{out}/log.txt")
    assert line.endswith(LINE.format(STOP_AT))
    assert after == before  # the handlers are only there during train()
    # the loader worker ignored the signals sent to it, and was shut down at the stop
    assert workers_left == []


def test_resume_after_sigterm_is_exact_in_one_process(one_process):
    ref, _, _, _, _, resumed = one_process
    assert resumed.start_iter == STOP_AT + 1 and resumed.iter == MAX_ITER
    assert_same_weights(resumed.model.state_dict(), ref.model.state_dict())


# ---------------------------------------------------------------------------- two processes
@pytest.fixture(scope="module")
def reference(parse_args, fork_ranks, tmp_path_factory):
    """The uninterrupted 2-process run, a checkpoint after every iteration."""
    out = str(tmp_path_factory.mktemp("ref2"))
    assert fork_ranks(_train_as_rank, parse_args(out, "SOLVER.CHECKPOINT_PERIOD", 1)) == [0, 0]
    return out


ACCUMULATE = ("SOLVER.ACCUMULATE_STEPS", 2)  # groups of iterations 0-1 and 2-3


def test_sigterm_to_one_of_two_processes_in_an_accumulation_group(
    parse_args, reference, fork_ranks, tmp_path
):
    """Only rank 1 gets SIGTERM, during iteration 2 of 4 with 2 accumulation steps: both stop
    after the same iteration, in the middle of the group 2-3, with one checkpoint holding the
    processes' mean partial gradients; exit 75; --resume ends with the weights of an
    uninterrupted run (up to the float rounding of averaging the two micro-steps' gradients
    separately instead of their sum)."""
    full = str(tmp_path / "full")
    assert fork_ranks(_train_as_rank, parse_args(full, *ACCUMULATE)) == [0, 0]
    out = str(tmp_path / "run")
    assert fork_ranks(_train_as_rank, parse_args(out, *ACCUMULATE), 1) == [75, 75]
    assert glob.glob(f"{out}/model_*.pth") == [f"{out}/model_{STOP_AT:07d}.pth"]
    for log in ("log.txt", "log.txt.rank1"):  # each process logs the line once
        (line,) = stop_lines(f"{out}/{log}")
        assert line.endswith(LINE.format(STOP_AT))
    ckpt = torch.load(f"{out}/model_{STOP_AT:07d}.pth", weights_only=True)
    acc = ckpt["trainer"]["_trainer"]["accumulation"]
    assert acc["group_start"] == STOP_AT and len(acc["grads"]) > 0
    assert fork_ranks(_train_as_rank, parse_args(out, *ACCUMULATE, flags=["--resume"])) == [0, 0]
    resumed, expected = model_weights(f"{out}/model_final.pth"), model_weights(
        f"{full}/model_final.pth"
    )
    assert resumed.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(resumed[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)
    # accumulation changed the training: the comparison is not with the plain reference
    plain = model_weights(f"{reference}/model_final.pth")
    assert any(not torch.allclose(expected[k], plain[k]) for k in expected if k in plain)


# ---------------------------------------------------------------------------- evaluation only
def _evaluate_signalled(args):
    """train_net.py's --eval-only branch; the evaluator sends SIGTERM to its own process when
    the first video arrives."""
    cfg = setup(args)
    check_eval_weights(cfg)
    model = Trainer.build_model(cfg)
    OV2VSSCheckpointer(model, cfg.OUTPUT_DIR, strict=True, config=cfg).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=False
    )
    evaluator = Trainer.build_evaluator(cfg, cfg.DATASETS.TEST[0])
    process = evaluator.process

    def signalled(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)  # an evaluation that ignored it would go on
        return process(*a, **k)

    evaluator.process = signalled
    launch_cli(lambda a: Trainer.test(cfg, model, [evaluator]), args)


def test_eval_only_stops_at_once_without_a_checkpoint(parse_args, reference, fork_ranks, tmp_path):
    args = parse_args(
        tmp_path, "MODEL.WEIGHTS", f"{reference}/model_final.pth",
        "DATASETS.TEST", "('vspw_toy_val_unseen',)", flags=["--eval-only"],
    )  # fmt: skip
    start = time.monotonic()
    assert fork_ranks(_evaluate_signalled, args, world_size=1) == [-signal.SIGTERM]
    assert time.monotonic() - start < 60
    assert not glob.glob(f"{tmp_path}/**/*.pth", recursive=True)
    assert not glob.glob(f"{tmp_path}/**/metrics.json", recursive=True)


# ---------------------------------------------------------------------------- accumulation
class _Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, batch):
        return (self.lin(batch[0]) ** 2).sum()


def _average_in_rank():
    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(_Quadratic())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = iter([[torch.arange(3.0) + 10 * rank]])
    trainer = StepTrainer(model, batches, opt, accumulate_steps=2, max_iter=4)
    with EventStorage(0):
        trainer.iter = 0
        trainer.run_step()  # the group's first micro-step: no_sync, each its own gradient
    own = [p.grad.clone() for p in model.module.parameters()]
    all_grads = [[torch.zeros_like(g) for g in own] for _ in range(2)]
    for i, g in enumerate(own):
        dist.all_gather([all_grads[0][i], all_grads[1][i]], g)
    assert not torch.equal(all_grads[0][0], all_grads[1][0])  # they differ before
    trainer.average_partial_gradients()
    for i, p in enumerate(model.module.parameters()):
        torch.testing.assert_close(p.grad, (all_grads[0][i] + all_grads[1][i]) / 2)
    dist.destroy_process_group()


def test_partial_gradients_are_averaged_before_a_stop(fork_ranks):
    """Stopped in the middle of an accumulation group under DDP, every process saves the
    mean of the processes' partial gradients."""
    assert fork_ranks(_average_in_rank) == [0, 0]


# ---------------------------------------------------------------------------- the launchers
@pytest.fixture(scope="module", autouse=True)
def launchers(parse_args, tiny_config_file, repo_root, tmp_path_factory):
    """The launchers' runs, started with the module: ``name -> (_Launcher, OUTPUT_DIR)``.

    launch: `train_net.py --num-gpus 2` (detectron2's launch, 1 loader worker per process);
    once both processes train, SIGTERM to its whole process group, as Ctrl-C or SLURM send.
    torchrun: `torchrun --nproc-per-node 2 --max-restarts 1`; rank 1 killed by SIGKILL after
    the first checkpoint."""
    train_net = [os.path.join(repo_root, "train_net.py"), "--config-file", tiny_config_file]

    # each run's own folder name: the watcher threads read them later
    launch_out = str(tmp_path_factory.mktemp("launch") / "run")
    args = parse_args(launch_out, "DATALOADER.NUM_WORKERS", 1)
    launch = _Launcher(
        [sys.executable, *train_net, "--num-gpus", "2", "--dist-url", "auto", *args.opts]
    )
    # both processes train (their stop signals handled) before the signal: rank 1 logs to its
    # own file; a process signalled while starting up stops with no checkpoint instead
    launch.then(
        lambda: os.killpg(launch.proc.pid, signal.SIGTERM),
        lambda: launch.wait_for("Starting training from iteration 0"),
        lambda: launch.wait_for_log(
            f"{launch_out}/log.txt.rank1", "Starting training from iteration 0"
        ),
    )
    runs = {"launch": (launch, launch_out)}

    torchrun_out = str(tmp_path_factory.mktemp("torchrun") / "run")
    args = parse_args(torchrun_out, "SOLVER.CHECKPOINT_PERIOD", 1)
    torchrun = _Launcher(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "--max-restarts", "1", *train_net, *args.opts]
    )  # fmt: skip

    def kill_rank1():
        (rank1,) = [p for p in _children(torchrun.proc.pid) if _environ(p).get("RANK") == "1"]
        os.kill(rank1, signal.SIGKILL)

    torchrun.then(
        kill_rank1,
        lambda: torchrun.wait_for(
            "Saving checkpoint to " + os.path.join(torchrun_out, "model_0000000.pth")
        ),
    )
    runs["torchrun"] = (torchrun, torchrun_out)
    yield runs
    for run, _ in runs.values():
        if run.proc.poll() is None:  # a test that failed early
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()


def test_sigterm_to_the_process_group_of_launch(launchers, parse_args, reference, fork_ranks):
    """`train_net.py --num-gpus 2` and SIGTERM to its process group (the launchers fixture):
    exit status 75, one line, the checkpoint of the stopped iteration equals the forked
    reference's (launch and torchrun's path train alike), and --resume ends with the
    reference's weights."""
    run, out = launchers["launch"]
    assert run.finish(300) == EXIT_STOPPED, run.output[-4000:]
    stops = [line.rstrip() for line in run.lines if "stopped at iteration" in line]
    assert len(stops) == 1, run.output[-4000:]
    line = stops[0]
    k = int(line.split("stopped at iteration ")[1].split()[0])
    assert line.endswith(LINE.format(k)) and k < MAX_ITER - 1, run.output[-4000:]
    assert glob.glob(f"{out}/model_*.pth") == [f"{out}/model_{k:07d}.pth"]
    assert_same_weights(
        model_weights(f"{out}/model_{k:07d}.pth"), model_weights(f"{reference}/model_{k:07d}.pth")
    )
    assert fork_ranks(_train_as_rank, parse_args(out, flags=["--resume"])) == [0, 0]
    assert_same_weights(
        model_weights(f"{out}/model_final.pth"), model_weights(f"{reference}/model_final.pth")
    )


def test_torchrun_restart_after_a_killed_worker(launchers, reference):
    """`torchrun --nproc-per-node 2 --max-restarts 1`, rank 1 killed by SIGKILL after the
    first checkpoint (the launchers fixture): the restarted group resumes by itself and the
    job ends with the weights of the uninterrupted reference (so also torchrun trains as
    launch does)."""
    run, out = launchers["torchrun"]
    assert run.finish() == 0, run.output[-4000:]
    assert "torchrun restart 1: resuming from the last checkpoint in " + out in run.output
    starts = [line.rstrip() for line in run.lines if "Starting training from iteration" in line]
    assert len(starts) == 2 and not starts[1].endswith("iteration 0"), run.output[-4000:]
    assert_same_weights(
        model_weights(f"{out}/model_final.pth"), model_weights(f"{reference}/model_final.pth")
    )
