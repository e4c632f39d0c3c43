"""The per-iteration step trainers: mixed precision and gradient accumulation.

Mixed precision (``SOLVER.AMP.ENABLED``): fp16 + GradScaler on CUDA (detectron2's AMPTrainer),
bf16 autocast on CPU (:class:`CPUAutocastTrainer`).

Gradient accumulation (``SOLVER.ACCUMULATE_STEPS`` = A > 1, :class:`GradientAccumulationTrainer`;
README "Differences from the official code"), as mmcv's ``GradientCumulativeOptimizerHook``
that the official code uses (local_configs/vit/vitb/vitb.py line 83):

* an iteration is one micro-batch of ``SOLVER.IMS_PER_BATCH`` windows (detectron2's meaning);
  iterations ``g*A .. g*A + A - 1`` form group g, cut short by ``SOLVER.MAX_ITER``;
* each micro-batch's loss is divided by its group's size, the gradients add up, and the
  optimizer steps once, after the group's last iteration — so ``MAX_ITER`` 100000 with A = 4 is
  25000 optimizer steps;
* the LR schedule (warm-up, poly) advances every iteration, as mmcv's iteration-based LR hook
  does, and the step uses the LR of the group's last iteration; ``SOLVER.WARMUP_ITERS`` and
  ``MAX_ITER`` count iterations;
* DDP: the group's earlier micro-steps run under ``no_sync`` (gradients stay local), its last one
  all-reduces the sum, which is the mean over all processes and micro-batches. A micro-step
  after which a periodic checkpoint is written (``(iter + 1) % SOLVER.CHECKPOINT_PERIOD == 0``)
  also synchronises, so every process holds the same partial gradients there;
* resume: a checkpoint written in the middle of a group stores the partial gradients, and a
  resumed run continues the group from them, so it ends with the weights of an uninterrupted run
  (same thread count; tested).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Dict, Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, SimpleTrainer
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .distributed import unwrap_model
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


class GradientAccumulationTrainer(SimpleTrainer):
    """Steps the optimizer once every ``accumulate_steps`` iterations (see the module docstring).

    Args:
        model, data_loader, optimizer: as for SimpleTrainer.
        accumulate_steps: A, micro-batches per optimizer step (>= 1).
        max_iter: SOLVER.MAX_ITER (the last group may be shorter); the Trainer keeps it current.
        checkpoint_period: SOLVER.CHECKPOINT_PERIOD (micro-steps before a checkpoint
            synchronise under DDP); 0 = none.
        autocast: None, or (device type, dtype) of the forward's autocast.
        grad_scaler: a GradScaler (fp16 on CUDA), or None.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Any,
        optimizer: torch.optim.Optimizer,
        accumulate_steps: int,
        max_iter: int,
        checkpoint_period: int = 0,
        autocast: Optional[tuple] = None,
        grad_scaler: Optional[Any] = None,
    ):
        super().__init__(model, data_loader, optimizer)
        if int(accumulate_steps) != accumulate_steps or accumulate_steps < 1:
            raise ValueError(
                f"SOLVER.ACCUMULATE_STEPS={accumulate_steps!r}: must be an integer >= 1"
            )
        self.accumulate_steps = int(accumulate_steps)
        self.max_iter = int(max_iter)
        self.checkpoint_period = int(checkpoint_period)
        self.autocast = autocast
        self.grad_scaler = grad_scaler
        # first iteration of the group whose gradients the parameters hold (None: none held)
        self._group_start: Optional[int] = None

    def group(self, iteration: int) -> tuple:
        """(first, last) iteration of the accumulation group of ``iteration``."""
        first = iteration // self.accumulate_steps * self.accumulate_steps
        last = min(first + self.accumulate_steps, self.max_iter) - 1
        return first, max(last, iteration)

    def _syncs(self, iteration: int, last: int) -> bool:
        """Whether DDP all-reduces after this micro-step (see the module docstring)."""
        period = self.checkpoint_period
        return iteration == last or (period > 0 and (iteration + 1) % period == 0)

    def run_step(self) -> None:
        assert self.model.training, "[GradientAccumulationTrainer] model was changed to eval mode!"
        i = self.iter
        first, last = self.group(i)
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self._group_start != first:
            if i != first:
                logger.warning(
                    f"iteration {i}: the checkpoint holds no gradients of iterations {first}-{i - 1} "
                    f"(SOLVER.ACCUMULATE_STEPS={self.accumulate_steps}); this optimizer step uses "
                    "only the remaining micro-batches of its group"
                )
            self.optimizer.zero_grad()
            self._group_start = first
        no_sync = isinstance(self.model, DistributedDataParallel) and not self._syncs(i, last)
        with self.model.no_sync() if no_sync else contextlib.nullcontext():
            autocast = (
                torch.autocast(self.autocast[0], dtype=self.autocast[1])
                if self.autocast is not None
                else contextlib.nullcontext()
            )
            with autocast:
                loss_dict = self.model(data)
                if isinstance(loss_dict, torch.Tensor):
                    loss_dict = {"total_loss": loss_dict}
                losses = sum(loss_dict.values())
            scaled = losses / (last - first + 1)
            if self.grad_scaler is not None:
                scaled = self.grad_scaler.scale(scaled)
            scaled.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)  # the micro-batch's own (undivided) losses
        if i == last:
            if self.grad_scaler is not None:
                self.grad_scaler.step(self.optimizer)
                self.grad_scaler.update()
            else:
                self.optimizer.step()
            self._group_start = None  # zeroed at the next group's first micro-step

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        if self._group_start is not None:  # in the middle of a group: keep its gradients
            grads = {
                name: p.grad.detach().clone()
                for name, p in unwrap_model(self.model).named_parameters()
                if p.grad is not None
            }
            ret["accumulation"] = {"group_start": self._group_start, "grads": grads}
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        acc = state_dict.get("accumulation")
        self._group_start = None
        if acc is None:
            return
        params = dict(unwrap_model(self.model).named_parameters())
        unknown = sorted(set(acc["grads"]) - set(params))
        if unknown:
            raise ValueError(
                f"the checkpoint's accumulated gradients name parameters the model lacks: "
                f"{unknown[:3]}"
            )
        self.optimizer.zero_grad()
        for name, grad in acc["grads"].items():
            p = params[name]
            p.grad = grad.to(device=p.device, dtype=p.dtype).clone()
        self._group_start = int(acc["group_start"])


def build_step_trainer(
    cfg: CfgNode, model: nn.Module, data_loader: Any, optimizer: torch.optim.Optimizer
) -> SimpleTrainer:
    """The per-iteration trainer: plain, AMP with fp16 + GradScaler on CUDA (detectron2's
    AMPTrainer), or bf16 autocast on CPU (:class:`CPUAutocastTrainer`); with
    ``SOLVER.ACCUMULATE_STEPS`` > 1 a :class:`GradientAccumulationTrainer` in the same mode."""
    steps = cfg.SOLVER.ACCUMULATE_STEPS
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise SetupError(f"SOLVER.ACCUMULATE_STEPS={steps!r}: must be an integer >= 1")
    autocast, scaler = None, None
    if cfg.SOLVER.AMP.ENABLED:
        device = torch.device(cfg.MODEL.DEVICE).type
        if device == "cuda":
            autocast, scaler = ("cuda", torch.float16), torch.amp.GradScaler("cuda")
        elif device == "cpu":
            if not torch.amp.is_autocast_available("cpu"):
                raise SetupError(
                    "SOLVER.AMP.ENABLED on CPU needs CPU autocast, which this PyTorch lacks"
                )
            logger.info(
                "SOLVER.AMP.ENABLED on CPU: bfloat16 autocast (fp16 with a gradient scaler needs "
                "CUDA); it is faster only on CPUs with bf16 instructions (AVX512-BF16 / AMX)"
            )
            autocast = ("cpu", torch.bfloat16)
        else:
            raise SetupError(
                "SOLVER.AMP.ENABLED: mixed precision is supported on cuda and cpu, not "
                f"MODEL.DEVICE={cfg.MODEL.DEVICE}"
            )
    if steps > 1:
        return GradientAccumulationTrainer(
            model,
            data_loader,
            optimizer,
            accumulate_steps=int(steps),
            max_iter=cfg.SOLVER.MAX_ITER,
            checkpoint_period=cfg.SOLVER.CHECKPOINT_PERIOD,
            autocast=autocast,
            grad_scaler=scaler,
        )
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    if autocast[0] == "cuda":
        return AMPTrainer(model, data_loader, optimizer, grad_scaler=scaler)
    return CPUAutocastTrainer(model, data_loader, optimizer)
