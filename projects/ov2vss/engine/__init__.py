"""Training and evaluation engine of OV2VSS (``train_net.py`` is a thin entry point over it).

* :mod:`.setup`: the config of a run and early checks of the user's files,
* :mod:`.trainer`: :class:`Trainer`, detectron2's ``DefaultTrainer`` for video and scale,
* :mod:`.distributed`: DDP on CPU (gloo) and GPU (NCCL),
* :mod:`.amp`: mixed precision on GPU (fp16) and CPU (bf16), gradient accumulation,
* :mod:`.launch`: ``launch`` with one-line errors for the user's mistakes.

The resumable training data stream is in :mod:`ov2vss.data.build`.
"""

from .amp import CPUAutocastTrainer, GradientAccumulationTrainer, build_step_trainer
from .distributed import create_ddp_model, sync_model_buffers, unwrap_model
from .errors import SetupError
from .launch import launch_cli
from .setup import check_dataset_files, check_eval_weights, configure_cpu_threads, setup
from .trainer import StepSeedHook, Trainer

__all__ = [
    "CPUAutocastTrainer",
    "GradientAccumulationTrainer",
    "SetupError",
    "StepSeedHook",
    "Trainer",
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
