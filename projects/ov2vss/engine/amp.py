"""Mixed precision: fp16 + GradScaler on CUDA (detectron2's AMPTrainer), bf16 autocast on CPU."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, SimpleTrainer
from torch import nn

from .errors import SetupError

logger = logging.getLogger(__name__)


class CPUAutocastTrainer(SimpleTrainer):
    """SimpleTrainer whose forward pass runs under CPU autocast (bfloat16 by default).

    bfloat16 has float32's exponent range, so no gradient scaler is needed; parameters,
    gradients and optimizer state stay float32.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Any,
        optimizer: torch.optim.Optimizer,
        precision: torch.dtype = torch.bfloat16,
        **kwargs: Any,
    ):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.precision = precision

    def run_step(self) -> None:
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()  # outside autocast: backward ops follow their forward's dtypes
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def build_step_trainer(
    cfg: CfgNode, model: nn.Module, data_loader: Any, optimizer: torch.optim.Optimizer
) -> SimpleTrainer:
    """The per-iteration trainer: plain, AMP with fp16 + GradScaler on CUDA (detectron2's
    AMPTrainer), or bf16 autocast on CPU (:class:`CPUAutocastTrainer`)."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    device = torch.device(cfg.MODEL.DEVICE).type
    if device == "cuda":
        return AMPTrainer(model, data_loader, optimizer, grad_scaler=torch.amp.GradScaler("cuda"))
    if device == "cpu":
        if not torch.amp.is_autocast_available("cpu"):
            raise SetupError(
                "SOLVER.AMP.ENABLED on CPU needs CPU autocast, which this PyTorch lacks"
            )
        logger.info(
            "SOLVER.AMP.ENABLED on CPU: bfloat16 autocast (fp16 with a gradient scaler needs CUDA); "
            "it is faster only on CPUs with bf16 instructions (AVX512-BF16 / AMX)"
        )
        return CPUAutocastTrainer(model, data_loader, optimizer)
    raise SetupError(
        f"SOLVER.AMP.ENABLED: mixed precision is supported on cuda and cpu, not MODEL.DEVICE={cfg.MODEL.DEVICE}"
    )
