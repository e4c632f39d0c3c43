"""Helpers for train_net.py: early, clear errors and per-dataset vocabularies."""
from __future__ import annotations

import os
from typing import List

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .ov2vss_model import dataset_vocabulary


class SetupError(RuntimeError):
    """A problem with the user's files or config, reported without a deep traceback."""


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def test_vocabulary(cfg: CfgNode, dataset_name: str) -> List[str]:
    """The vocabulary a test dataset is evaluated with: its own class texts (metadata)."""
    return dataset_vocabulary(dataset_name)


def prepare_datasets_for_cfg(cfg: CfgNode) -> None:
    """Re-register the toy datasets when the config points them to another root."""
    if cfg.DATASETS.TOY.ROOT:
        from .data.datasets.register_vspw_toy import register_toy

        register_toy(cfg.DATASETS.TOY.ROOT)


def check_dataset_files(cfg: CfgNode, train: bool = True) -> None:
    """Load every dataset the run needs now, so that missing data is reported up front."""
    names = list(cfg.DATASETS.TEST) + (list(cfg.DATASETS.TRAIN) if train else [])
    for name in names:
        try:
            DatasetCatalog.get(name)
        except (FileNotFoundError, ValueError) as e:
            raise SetupError(f"dataset {name!r}: {e}") from e


def check_weights_file(path: str) -> None:
    """MODEL.WEIGHTS must name an existing file (or a detectron2:// / http(s):// URL)."""
    if not path:
        raise SetupError("--eval-only needs MODEL.WEIGHTS: the checkpoint to evaluate")
    if "://" in path:
        return
    if not os.path.isfile(path):
        raise SetupError(f"MODEL.WEIGHTS: checkpoint file {path} does not exist")
