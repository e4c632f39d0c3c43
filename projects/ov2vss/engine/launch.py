"""The command line around a ``main(args)``: detectron2's ``launch`` (``--num-gpus`` processes
per machine), or one process of ``torchrun``; one-line errors for the user's mistakes, and the
exit status :data:`~.preemption.EXIT_STOPPED` for a run stopped by a signal
(docs/GETTING_STARTED.md, "Training at scale" and "Preemption, SLURM, Kubernetes")."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import sys
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

from ..errors import SetupError
from .preemption import EXIT_STOPPED, SignalRecorder, signal_name

__all__ = ["elastic_restart_count", "launch_cli", "started_by_torchrun"]

# what torchrun (torch.distributed.elastic) sets for each process it starts
TORCHRUN_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
)  # fmt: skip


def started_by_torchrun() -> bool:
    """Whether this process is one of torchrun's (its rank and peers are in the environment)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def elastic_restart_count() -> int:
    """How many times torchrun has restarted this worker group (0: the first start)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)


def _run_reporting_setup_errors(main_func: Callable, *args: Any) -> Any:
    try:
        return main_func(*args)
    except SetupError as e:  # CheckpointError included
        print(f"error (rank {comm.get_rank()}): {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def launch_cli(main_func: Callable, args: Any) -> Any:
    """Run ``main_func(args)``: under torchrun in this process, with the process group from
    the environment; otherwise through detectron2's ``launch`` (``--num-gpus`` processes per
    machine: GPUs, or CPU processes with gloo when CUDA is hidden). Problems with the user's
    files end the program with a one-line ``error: ...`` instead of a traceback."""
    try:
        if started_by_torchrun():
            return _torchrun_process(main_func, args)
        return _launch(main_func, args)
    except SetupError as e:  # CheckpointError included
        sys.exit(f"error: {e}")


def _torchrun_process(main_func: Callable, args: Any) -> Any:
    """What detectron2's ``launch`` does in each process it spawns, from torchrun's variables:
    the process group (NCCL on GPUs, gloo on CPU), the machine-local group, the GPU. A
    restarted group (``--max-restarts``) trains on from OUTPUT_DIR's last checkpoint."""
    if args.num_gpus != 1 or args.num_machines != 1:
        raise SetupError(
            "under torchrun the processes are torchrun's (--nproc-per-node, --nnodes): leave "
            f"out --num-gpus {args.num_gpus} and --num-machines {args.num_machines}"
        )
    local_rank, local_size = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    backend = "gloo"
    if torch.cuda.is_available():
        if local_size > torch.cuda.device_count():
            raise SetupError(
                f"torchrun --nproc-per-node {local_size} with {torch.cuda.device_count()} "
                "visible GPUs: one process per GPU (hide them, CUDA_VISIBLE_DEVICES=, for CPU)"
            )
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    store, rank, world_size = next(dist.rendezvous("env://", timeout=DEFAULT_TIMEOUT))
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's own store outlives a restart and keeps the previous group's addresses,
        # which a restarted process could read before they are rewritten: one namespace per
        # start (docs/GETTING_STARTED.md, "Preemption, SLURM, Kubernetes", for several machines)
        store = dist.PrefixStore(f"ov2vss/start_{elastic_restart_count()}", store)
    dist.init_process_group(
        backend=backend, store=store, rank=rank, world_size=world_size, timeout=DEFAULT_TIMEOUT
    )
    comm.create_local_process_group(local_size)
    comm.synchronize()
    if elastic_restart_count() > 0 and not args.eval_only:
        args.resume = True  # logged by setup()
    result = _run_reporting_setup_errors(main_func, args)
    dist.destroy_process_group()
    return result


def _forward_to_children(signum: int) -> None:
    for child in multiprocessing.active_children():
        with contextlib.suppress(OSError):  # it may have ended meanwhile
            os.kill(child.pid, signum)


def _launch(main_func: Callable, args: Any) -> Any:
    if args.num_gpus * args.num_machines == 1:
        return main_func(args)  # launch() would call it here too
    # The launcher passes stop signals on to its processes (a signal sent to it alone: `kill
    # PID`, Kubernetes) and waits for them to save. After a signal it always ends with
    # EXIT_STOPPED: --resume is then safe (a run that had just finished only evaluates again).
    recorder = SignalRecorder(forward=_forward_to_children)
    with recorder.installed():
        try:
            launch(
                functools.partial(_run_reporting_setup_errors, main_func),
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
            )
        except mp.ProcessExitedException as e:
            if e.exit_code == EXIT_STOPPED:  # the processes said where they stopped
                sys.exit(EXIT_STOPPED)
            if not recorder.signum:
                sys.exit(f"error: a training process failed ({e}); its message is above")
    if recorder.signum:  # the processes stopped before training began, or had finished
        again = "run it again" if args.eval_only else "continue with --resume"
        print(f"stopped by {signal_name(recorder.signum)}; {again}", flush=True)
        sys.exit(EXIT_STOPPED)
    return None
