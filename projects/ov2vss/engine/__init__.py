"""Training and evaluation engine of OV2VSS (``train_net.py`` is a thin entry point over it).

* :mod:`.setup`: the config of a run and early checks of the user's files,
* :mod:`.trainer`: :class:`Trainer`, detectron2's ``DefaultTrainer`` for video and scale,
* :mod:`.distributed`: DDP on CPU (gloo) and GPU (NCCL),
* :mod:`.train_step`: one iteration, with mixed precision and gradient accumulation,
* :mod:`.launch`: ``launch`` or ``torchrun``, with one-line errors for the user's mistakes,
* :mod:`.preemption`: stopping on SIGTERM / SIGINT / SIGUSR1 with a checkpoint.

The resumable training data stream is in :mod:`ov2vss.data.build`; the errors reported as
one line are :class:`ov2vss.errors.SetupError` and its subclasses.
"""

from .distributed import create_ddp_model, sync_model_buffers, unwrap_model
from .launch import launch_cli
from .preemption import EXIT_STOPPED, TrainingStopped
from .setup import check_dataset_files, check_eval_weights, configure_cpu_threads, setup
from .train_step import StepTrainer, build_step_trainer
from .trainer import StepSeedHook, Trainer

__all__ = [
    "EXIT_STOPPED",
    "StepSeedHook",
    "StepTrainer",
    "Trainer",
    "TrainingStopped",
    "build_step_trainer",
    "check_dataset_files",
    "check_eval_weights",
    "configure_cpu_threads",
    "create_ddp_model",
    "launch_cli",
    "setup",
    "sync_model_buffers",
    "unwrap_model",
]
