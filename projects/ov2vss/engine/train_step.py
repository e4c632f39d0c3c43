"""One training iteration: mixed precision and gradient accumulation, in one step trainer.

``SOLVER.AMP.ENABLED``: fp16 autocast with a GradScaler on CUDA, bf16 autocast (no scaler) on
CPU. ``SOLVER.ACCUMULATE_STEPS`` = A: the optimizer steps once per group of A iterations
(micro-batches); the rules — groups, loss scale, LR schedule, DDP, resuming mid-group — are in
docs/GETTING_STARTED.md, "Gradient accumulation". With A = 1 and AMP off, a step is exactly
detectron2's ``SimpleTrainer`` step.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, ContextManager, Dict, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import SetupError
from .distributed import unwrap_model

logger = logging.getLogger(__name__)


class StepTrainer(SimpleTrainer):
    """detectron2's ``SimpleTrainer`` with autocast, a gradient scaler and gradient accumulation.

    Args:
        model, data_loader, optimizer: as for SimpleTrainer.
        accumulate_steps: A, micro-batches per optimizer step (an integer >= 1).
        max_iter: SOLVER.MAX_ITER, where the last group is cut short (the Trainer keeps it
            current); None: never cut.
        checkpoint_period: SOLVER.CHECKPOINT_PERIOD (under DDP, the micro-step before a
            checkpoint synchronises); 0 = none.
        autocast: None, or (device type, dtype) of the forward pass's autocast.
        grad_scaler: a GradScaler (fp16 on CUDA), or None.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Any,
        optimizer: torch.optim.Optimizer,
        accumulate_steps: int = 1,
        max_iter: Optional[int] = None,
        checkpoint_period: int = 0,
        autocast: Optional[Tuple[str, torch.dtype]] = None,
        grad_scaler: Optional[torch.amp.GradScaler] = None,
    ):
        super().__init__(model, data_loader, optimizer)
        steps = accumulate_steps
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise SetupError(f"SOLVER.ACCUMULATE_STEPS={steps!r}: must be an integer >= 1")
        self.accumulate_steps = int(steps)
        self.max_iter = max_iter
        self.checkpoint_period = int(checkpoint_period)
        self.autocast = autocast
        self.grad_scaler = grad_scaler
        # first iteration of the group whose gradients the parameters hold (None: none held)
        self._group_start: Optional[int] = None

    def group(self, iteration: int) -> Tuple[int, int]:
        """(first, last) iteration of the accumulation group of ``iteration``."""
        first = iteration // self.accumulate_steps * self.accumulate_steps
        end = first + self.accumulate_steps
        last = (end if self.max_iter is None else min(end, int(self.max_iter))) - 1
        return first, max(last, iteration)

    def _syncs(self, iteration: int, last: int) -> bool:
        """Whether DDP all-reduces after this micro-step: at the group's end, and before a
        checkpoint (so that every process saves the same partial gradients)."""
        period = self.checkpoint_period
        return iteration == last or (period > 0 and (iteration + 1) % period == 0)

    def _autocast(self) -> ContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.autocast[0], dtype=self.autocast[1])

    def run_step(self) -> None:
        assert self.model.training, "[StepTrainer] model was changed to eval mode!"
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
            with self._autocast():
                loss_dict = self.model(data)
                if isinstance(loss_dict, torch.Tensor):
                    losses, loss_dict = loss_dict, {"total_loss": loss_dict}
                else:
                    losses = sum(loss_dict.values())
            if last > first:  # the group's gradient is the mean over its micro-batches
                losses = losses / (last - first + 1)
            if self.grad_scaler is not None:
                losses = self.grad_scaler.scale(losses)
            losses.backward()  # outside autocast: backward ops follow their forward's dtypes
        self.after_backward()
        self._write_metrics(loss_dict, data_time)  # the micro-batch's own (undivided) losses
        if i == last:
            if self.grad_scaler is not None:
                # unscales the gradients before optimizer.step(), where detectron2's
                # SOLVER.CLIP_GRADIENTS clips them (maybe_add_gradient_clipping)
                self.grad_scaler.step(self.optimizer)
                self.grad_scaler.update()
            else:
                self.optimizer.step()
            self._group_start = None  # zeroed at the next group's first micro-step

    def average_partial_gradients(self) -> None:
        """Make every process hold the mean of the processes' partial gradients, when the last
        micro-step (``self.iter``) ran under ``no_sync`` in the middle of a group: a stop on a
        signal saves them there (:mod:`.preemption`). Resuming from them gives the
        uninterrupted run's weights up to float rounding (the sum is reduced in another order)."""
        if self._group_start is None or not isinstance(self.model, DistributedDataParallel):
            return
        if self._syncs(self.iter, self.group(self.iter)[1]):
            return  # DDP has just all-reduced them
        world_size = torch.distributed.get_world_size()
        for p in unwrap_model(self.model).parameters():
            if p.requires_grad:  # a parameter without a gradient yet contributes zeros
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                torch.distributed.all_reduce(grad)
                p.grad = grad.div_(world_size)

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


def autocast_mode(
    cfg: CfgNode,
) -> Tuple[Optional[Tuple[str, torch.dtype]], Optional[torch.amp.GradScaler]]:
    """(autocast, grad scaler) of ``SOLVER.AMP.ENABLED`` on ``MODEL.DEVICE``: (None, None)
    when off, fp16 with a GradScaler on CUDA, bf16 without one on CPU."""
    if not cfg.SOLVER.AMP.ENABLED:
        return None, None
    device = torch.device(cfg.MODEL.DEVICE).type
    if device == "cuda":
        return ("cuda", torch.float16), torch.amp.GradScaler("cuda")
    if device == "cpu":
        if not torch.amp.is_autocast_available("cpu"):
            raise SetupError(
                "SOLVER.AMP.ENABLED on CPU needs CPU autocast, which this PyTorch lacks"
            )
        logger.info(
            "SOLVER.AMP.ENABLED on CPU: bfloat16 autocast (fp16 with a gradient scaler needs "
            "CUDA); it is faster only on CPUs with bf16 instructions (AVX512-BF16 / AMX)"
        )
        return ("cpu", torch.bfloat16), None
    raise SetupError(
        "SOLVER.AMP.ENABLED: mixed precision is supported on cuda and cpu, not "
        f"MODEL.DEVICE={cfg.MODEL.DEVICE}"
    )


def build_step_trainer(
    cfg: CfgNode, model: nn.Module, data_loader: Any, optimizer: torch.optim.Optimizer
) -> StepTrainer:
    """The :class:`StepTrainer` of ``SOLVER.ACCUMULATE_STEPS`` and ``SOLVER.AMP.ENABLED``."""
    autocast, grad_scaler = autocast_mode(cfg)
    return StepTrainer(
        model,
        data_loader,
        optimizer,
        accumulate_steps=cfg.SOLVER.ACCUMULATE_STEPS,
        max_iter=cfg.SOLVER.MAX_ITER,
        checkpoint_period=cfg.SOLVER.CHECKPOINT_PERIOD,
        autocast=autocast,
        grad_scaler=grad_scaler,
    )
