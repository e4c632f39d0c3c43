"""Training that stops cleanly on a signal (docs/GETTING_STARTED.md, "Preemption, SLURM,
Kubernetes").

While :meth:`Trainer.train <ov2vss.engine.Trainer.train>` runs, SIGTERM, SIGINT and SIGUSR1
(schedulers, Ctrl-C, SLURM's ``--signal``) are only recorded. After every iteration the
processes agree whether any of them got one (one all-reduce of one integer), so all stop at the
same iteration boundary: one checkpoint at that iteration (named like the periodic ones, found
by ``--resume``), one log line, and the exit status :data:`EXIT_STOPPED`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from detectron2.engine import hooks
from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm

__all__ = [
    "EXIT_STOPPED",
    "STOP_SIGNALS",
    "SignalRecorder",
    "StopOnSignalHook",
    "TrainingStopped",
    "agreed_signal",
    "signal_name",
]

logger = logging.getLogger(__name__)

# EX_TEMPFAIL of sysexits.h, "try again": a scheduler requeues / torchrun restarts, and the
# run continues with --resume
EXIT_STOPPED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class TrainingStopped(SystemExit):
    """Raised out of ``Trainer.train()`` once the checkpoint of a stop is written; uncaught, it
    ends the program with :data:`EXIT_STOPPED`."""

    def __init__(self, iteration: int, signum: int):
        super().__init__(EXIT_STOPPED)
        self.iteration = iteration
        self.signum = signum


class SignalRecorder:
    """Records the first stop signal the process gets, and does nothing else: no exception
    (a second Ctrl-C cannot interrupt a checkpoint being written), no I/O.

    Args:
        forward: called with each signal received (the launcher passes it on to its
            training processes).
    """

    def __init__(self, forward: Optional[Callable[[int], None]] = None):
        self.signum = 0
        self._forward = forward
        self._pid = os.getpid()
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            # a process forked from this one (e.g. an evaluation loader worker): act as
            # before the recorder was installed
            signal.signal(signum, self._previous.get(signum) or signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not self.signum:
            self.signum = signum
        if self._forward is not None:
            self._forward(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator["SignalRecorder"]:
        """Record :data:`STOP_SIGNALS` inside the block (from a clean slate); the previous
        handlers are back afterwards. Outside the main thread, where Python cannot set
        handlers, nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self.signum, self._pid = 0, os.getpid()
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, previous in self._previous.items():
                signal.signal(s, previous if previous is not None else signal.SIG_DFL)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, etc."""
    return signal.Signals(signum).name


def agreed_signal(signum: int) -> int:
    """The stop signal some process got (the largest number; 0: none), the same on every
    process: an all-reduce of one integer over the default group (none in one process)."""
    if comm.get_world_size() == 1:
        return signum
    device = "cpu"
    if dist.get_backend() == dist.Backend.NCCL:  # NCCL reduces GPU tensors only
        device = torch.device("cuda", torch.cuda.current_device())
    flag = torch.tensor([signum], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


class StopOnSignalHook(HookBase):
    """After every iteration k: if some process got a stop signal, make the state consistent
    (the partial gradients of an accumulation group), save checkpoint ``model_{k:07d}`` (unless
    the periodic checkpointer just wrote this iteration's), log one line, wait for every
    process, and raise :class:`TrainingStopped`. Goes after the checkpointer and before the
    evaluation hook (:func:`insert`), so a stopping run starts no evaluation.

    Args:
        recorder: the trainer's :class:`SignalRecorder`.
        checkpoint_period: SOLVER.CHECKPOINT_PERIOD (when the periodic checkpointer saves).
    """

    def __init__(self, recorder: SignalRecorder, checkpoint_period: int):
        self.recorder = recorder
        self.checkpoint_period = int(checkpoint_period)

    def insert(self, hook_list: List[Optional[HookBase]]) -> List[Optional[HookBase]]:
        """``hook_list`` with this hook before the first EvalHook (at the end if none)."""
        at = next(
            (i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook)), len(hook_list)
        )
        return hook_list[:at] + [self] + hook_list[at:]

    def after_step(self) -> None:
        signum = agreed_signal(self.recorder.signum)
        if signum:
            self._stop(signum)

    def _stop(self, signum: int) -> None:
        trainer = self.trainer
        k = trainer.iter
        # under DDP mid-group, the processes hold different partial gradients: average them
        average = getattr(getattr(trainer, "_trainer", None), "average_partial_gradients", None)
        if average is not None:
            average()
        period = self.checkpoint_period
        written = k >= trainer.max_iter - 1 or (period > 0 and (k + 1) % period == 0)
        if not written:
            trainer.checkpointer.save(f"model_{k:07d}", iteration=k)
        for h in trainer._hooks:  # a run stopped at its last iteration evaluates on --resume
            if isinstance(h, hooks.EvalHook):
                h._eval_after_train = False
        logger.info(f"stopped at iteration {k} by {signal_name(signum)}; continue with --resume")
        comm.synchronize()  # no process exits before the checkpoint is written
        raise TrainingStopped(k, signum)
