"""Run set-up: the config from the command line, logging, threads, and early checks of the
user's files, so that a missing dataset or checkpoint is one clear line at start-up."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
from typing import Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint_io import require_weights_file
from ..config import get_ov2vss_cfg
from ..errors import SetupError
from ..fileio import remove_stale_temp_files
from .launch import elastic_restart_count


def setup(args: argparse.Namespace) -> CfgNode:
    """The frozen config of a ``train_net.py`` run (``--config-file`` + overrides), with
    detectron2's default set-up (output dir, logging, seed) and OV2VSS's own logger.

    Before anything is written: a flag among the overrides is refused, OUTPUT_DIR must be
    writable, and the main process locks it (a second live run there is refused); temporary
    files left by interrupted checkpoint saves are removed. A group that torchrun restarted
    says that it resumes.
    """
    check_overrides(args.opts)
    cfg = get_ov2vss_cfg(args.config_file, args.opts)
    cfg.freeze()
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        lock_output_dir(cfg.OUTPUT_DIR)
        remove_stale_temp_files(cfg.OUTPUT_DIR)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ov2vss")
    restarts = elastic_restart_count()
    if restarts and args.resume:
        logging.getLogger(__name__).info(
            f"torchrun restart {restarts}: resuming from the last checkpoint in {cfg.OUTPUT_DIR}"
        )
    configure_cpu_threads(cfg)
    prepare_datasets_for_cfg(cfg)
    return cfg


def prepare_datasets_for_cfg(cfg: CfgNode) -> None:
    """Re-register the toy datasets when the config points them to another root."""
    if cfg.DATASETS.TOY.ROOT:
        from ..data.datasets.register_vspw_toy import register_toy

        register_toy(cfg.DATASETS.TOY.ROOT)


def check_dataset_files(cfg: CfgNode, train: bool = True) -> None:
    """Load every dataset the run needs now, so that missing data is reported up front."""
    names = list(cfg.DATASETS.TEST) + (list(cfg.DATASETS.TRAIN) if train else [])
    for name in names:
        try:
            DatasetCatalog.get(name)
        except (FileNotFoundError, ValueError) as e:
            raise SetupError(f"dataset {name!r}: {e}") from e


def check_eval_weights(cfg: CfgNode) -> None:
    """``--eval-only`` needs MODEL.WEIGHTS, and a local file must exist."""
    if not cfg.MODEL.WEIGHTS:
        raise SetupError("--eval-only needs MODEL.WEIGHTS: the checkpoint to evaluate")
    require_weights_file(cfg.MODEL.WEIGHTS)


def configure_cpu_threads(cfg: CfgNode) -> None:
    """With several CPU processes on a machine, split the cores between them (unless
    OMP_NUM_THREADS says otherwise): each would otherwise start one thread per core."""
    if cfg.MODEL.DEVICE != "cpu" or comm.get_local_size() <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))


def check_overrides(opts: List[str]) -> None:
    """Config overrides are KEY VALUE pairs after every flag; a flag among them (``... KEY
    VALUE --resume``) would be read as a key or a value."""
    flags = [str(o) for o in opts if str(o).startswith("--")]
    if flags:
        raise SetupError(
            f"{' '.join(flags)} found among the config overrides (KEY VALUE pairs): flags go "
            "before them, e.g. train_net.py --config-file CONFIG --resume MODEL.WEIGHTS FILE"
        )


_HELD_LOCKS: Dict[str, int] = {}  # OUTPUT_DIR -> descriptor; kept open for the process's life


def lock_output_dir(output_dir: str) -> None:
    """Create OUTPUT_DIR (an error names it when that fails) and hold an exclusive lock on
    ``OUTPUT_DIR/.ov2vss.lock`` until the process ends. The lock is the kernel's (flock): a
    run that crashes or is killed leaves none behind. A second live run is refused."""
    path = os.path.abspath(output_dir)
    if path in _HELD_LOCKS:
        return
    lock_file = os.path.join(path, ".ov2vss.lock")
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise SetupError(f"OUTPUT_DIR {path} cannot be written: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise SetupError(
            f"OUTPUT_DIR {path} is in use by another run (process {holder or 'unknown'}): wait "
            "for it to end, or give this run another OUTPUT_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD_LOCKS[path] = fd
