"""Multi-process training on GPUs (NCCL) and CPUs (gloo): the DDP wrapper and buffer sync."""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import SetupError


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def create_ddp_model(
    model: nn.Module, *, fp16_compression: bool = False, **kwargs: Any
) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when there are several processes.

    Unlike detectron2's helper, ``device_ids`` is only given for a CUDA model: DDP rejects it
    for CPU modules (CPU training uses the gloo backend).
    """
    if comm.get_world_size() == 1:
        return model
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    else:
        if dist.get_backend() == "nccl":
            raise SetupError(
                f"MODEL.DEVICE={device.type} with an NCCL process group: NCCL only moves GPU "
                "tensors. Hide the GPUs (CUDA_VISIBLE_DEVICES=) to train on CPU with gloo."
            )
        kwargs.pop("device_ids", None)
        kwargs.pop("output_device", None)
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression and device.type == "cuda":
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def sync_model_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every process.

    Buffers are not broadcast during training (as in detectron2), so each process updates
    its own BN statistics; evaluating with rank 0's — the ones the checkpoint holds — makes
    multi-process evaluation give exactly the metrics of one process.
    """
    if comm.get_world_size() == 1 or not isinstance(model, DistributedDataParallel):
        return
    with torch.no_grad():
        for buf in model.module.buffers():
            dist.broadcast(buf, src=0)
