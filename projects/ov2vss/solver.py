"""Optimizer and learning-rate schedule of OV2VSS (paper IV-B; docs/MODEL_ZOO.md, "Schedules").

AdamW (or SGD) with per-module learning-rate multipliers — backbone, CLIP, and the new
modules (x10 in the official code) — detectron2's gradient clipping, and a linear warm-up
followed by poly decay.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler, PolynomialDecayParamScheduler
from torch import nn

logger = logging.getLogger(__name__)

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def _module_group(name: str) -> str:
    if name.startswith("backbone."):
        return "backbone"
    if name.startswith("clip."):
        return "clip"
    return "head"


def build_param_groups(cfg: CfgNode, model: nn.Module) -> List[Dict[str, Any]]:
    """One parameter group per trainable parameter, with lr / weight decay by module.

    Weight decay: parameters of norm layers (BatchNorm, GroupNorm, LayerNorm, ...) get
    ``SOLVER.WEIGHT_DECAY_NORM`` (detectron2's key, 0 by default); biases and other 1-D / 0-D
    parameters (learnable temperatures) get ``SOLVER.WEIGHT_DECAY_BIAS``, or WEIGHT_DECAY_NORM
    when it is None (the default); every other parameter gets ``SOLVER.WEIGHT_DECAY``.
    The official code (local_configs/vit/vitb/vitb.py lines 68-72) decays biases and excludes
    parameters whose *name* contains "norm" outside the head — see docs/OFFICIAL_CODE.md.
    """
    base_lr = cfg.SOLVER.BASE_LR
    multipliers = {
        "backbone": cfg.SOLVER.BACKBONE_MULTIPLIER,
        "clip": cfg.SOLVER.CLIP_MULTIPLIER,
        "head": cfg.SOLVER.HEAD_MULTIPLIER,
    }
    norm_params, bias_params = set(), set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, _NORM_TYPES):
                norm_params.add(id(p))
            elif pname == "bias" or p.ndim <= 1:
                bias_params.add(id(p))
    wd_norm = cfg.SOLVER.WEIGHT_DECAY_NORM
    wd_bias = cfg.SOLVER.get("WEIGHT_DECAY_BIAS", None)
    wd_bias = wd_norm if wd_bias is None else wd_bias
    groups, seen = [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in norm_params:
            wd = wd_norm
        elif id(p) in bias_params:
            wd = wd_bias
        else:
            wd = cfg.SOLVER.WEIGHT_DECAY
        groups.append(
            {"params": [p], "lr": base_lr * multipliers[_module_group(name)], "weight_decay": wd}
        )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    groups = build_param_groups(cfg, model)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        optim_cls, kwargs = torch.optim.AdamW, {"lr": cfg.SOLVER.BASE_LR}
    elif name == "SGD":
        optim_cls, kwargs = torch.optim.SGD, {
            "lr": cfg.SOLVER.BASE_LR,
            "momentum": cfg.SOLVER.MOMENTUM,
        }
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: expected ADAMW or SGD")
    return maybe_add_gradient_clipping(cfg, optim_cls)(groups, **kwargs)


class _ClampedScheduler(ParamScheduler):
    """Holds the last value past the end instead of failing: a run resumed with a smaller
    SOLVER.MAX_ITER than its checkpoint's iteration must not crash the schedule."""

    def __init__(self, inner: ParamScheduler):
        self.inner = inner

    def __call__(self, where: float) -> float:
        return self.inner(min(max(where, 0.0), 1.0 - 1e-9))


class _PolyWithFloor(ParamScheduler):
    def __init__(self, power: float, floor: float):
        self.poly = PolynomialDecayParamScheduler(1.0, power)
        self.floor = floor

    def __call__(self, where: float) -> float:
        return max(self.poly(where), self.floor)


def build_lr_scheduler(
    cfg: CfgNode, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """WarmupPolyLR: linear (or constant) warm-up, then (1 - iter/max_iter)^power decay."""
    name = cfg.SOLVER.LR_SCHEDULER_NAME
    if name != "WarmupPolyLR":
        from detectron2.solver import build_lr_scheduler as d2_build

        return d2_build(cfg, optimizer)
    max_iter = max(cfg.SOLVER.MAX_ITER, 1)
    sched = _PolyWithFloor(cfg.SOLVER.POLY_LR_POWER, cfg.SOLVER.POLY_LR_CONSTANT_ENDING)
    sched = WarmupParamScheduler(
        sched,
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / max_iter, 1.0),
        cfg.SOLVER.WARMUP_METHOD,
        cfg.SOLVER.RESCALE_INTERVAL,
    )
    return LRMultiplier(optimizer, multiplier=_ClampedScheduler(sched), max_iter=max_iter)
