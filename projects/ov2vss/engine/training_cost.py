"""What one training step costs: FLOPs, and the memory a GPU needs (docs/BENCHMARKS.md).

:func:`measure_training_step` runs one forward + backward pass on CPU and reads, besides wall
time and FLOPs (``torch.utils.flop_counter``, a multiply-add = 2 FLOPs), the peak of the bytes
held by PyTorch's CPU allocator (the profiler's memory events). Tensors take the same bytes on
CPU and GPU (bf16 autocast on CPU stands for fp16 on GPU), so :func:`estimate_peak_bytes`
turns one window's numbers into what ``torch.cuda.max_memory_allocated`` should report for
several windows (the line through measurements with one and two windows:
:func:`activation_scaling`), and :func:`device_bytes_needed` into the memory a card must have.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = [
    "ADAMW_STATES",
    "activation_scaling",
    "CONTEXT_BYTES",
    "FRAGMENTATION",
    "StepCost",
    "device_bytes_needed",
    "estimate_peak_bytes",
    "max_windows",
    "measure_config_step",
    "measure_training_step",
    "model_bytes",
    "synthetic_window",
]

ADAMW_STATES = 2  # exp_avg and exp_avg_sq, fp32, per trainable parameter
# what a card holds besides the allocated peak: the CUDA context and cuDNN / cuBLAS
# workspaces (about 1 GiB on recent GPUs), and the caching allocator's fragmentation
CONTEXT_BYTES = 2**30
FRAGMENTATION = 0.10


@dataclass
class StepCost:
    """One training step of ``windows`` windows (bytes, FLOPs, seconds)."""

    windows: int
    param_bytes: int  # parameters and buffers
    trainable_bytes: int  # parameters that get a gradient (= gradient bytes)
    activation_bytes: int  # peak allocated above the model state during forward + backward
    saved_bytes: int  # distinct tensors autograd saved for the backward pass (not parameters)
    forward_flops: int
    backward_flops: int
    forward_s: float  # wall time
    backward_s: float
    cpu_s: float  # CPU time of the process over forward + backward (all threads)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def model_bytes(model: nn.Module) -> Tuple[int, int]:
    """(bytes of the parameters and buffers, bytes of the trainable parameters)."""
    tensors = list(model.parameters()) + list(model.buffers())
    total = sum(t.numel() * t.element_size() for t in tensors)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return total, trainable


def activation_scaling(one: StepCost, two: StepCost) -> Tuple[int, int]:
    """(bytes per window, constant bytes) of the activation peak from measurements with
    different numbers of windows: a line through the first peak whose slope is the larger of
    the peaks' growth per window and the first step's saved tensors per window (what autograd
    keeps of each window; a peak set by something made once per step, e.g. a weight copy,
    grows more slowly than that). The constant is never negative."""
    if one.windows == two.windows:
        raise ValueError(f"two measurements with different window counts needed, got {one.windows}")
    growth = (two.activation_bytes - one.activation_bytes) / (two.windows - one.windows)
    per_window = max(growth, one.saved_bytes / one.windows)
    constant = max(one.activation_bytes - one.windows * per_window, 0.0)
    return int(round(per_window)), int(round(constant))


def estimate_peak_bytes(
    param_bytes: int,
    trainable_bytes: int,
    per_window_bytes: int,
    windows: int,
    constant_bytes: int = 0,
) -> int:
    """The allocated peak of training (what ``torch.cuda.max_memory_allocated`` reports):
    parameters + gradients + AdamW's two states + ``windows`` x the activations of a window
    + the activations' constant part (:func:`activation_scaling`)."""
    return (
        param_bytes
        + (1 + ADAMW_STATES) * trainable_bytes
        + int(windows) * int(per_window_bytes)
        + int(constant_bytes)
    )


def device_bytes_needed(peak_bytes: int) -> int:
    """The memory a card needs for an allocated peak: + FRAGMENTATION + CONTEXT_BYTES."""
    return int(peak_bytes * (1.0 + FRAGMENTATION)) + CONTEXT_BYTES


def max_windows(
    param_bytes: int,
    trainable_bytes: int,
    per_window_bytes: int,
    capacity: int,
    constant_bytes: int = 0,
) -> int:
    """The most windows per GPU whose :func:`device_bytes_needed` fits ``capacity`` bytes."""
    if per_window_bytes <= 0:
        raise ValueError(f"activation bytes per window must be > 0, got {per_window_bytes}")
    fixed = estimate_peak_bytes(param_bytes, trainable_bytes, 0, 0, constant_bytes)
    windows = 0
    while device_bytes_needed(fixed + (windows + 1) * per_window_bytes) <= capacity:
        windows += 1
    return windows


def _cpu_flash_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward(grad_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


# the CPU's fused attention kernels (CLIP's towers use them), which the flop counter lacks
_EXTRA_FLOP_FORMULAS: Dict[Any, Callable] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
}


class _SavedBytes:
    """Sum of the distinct storages autograd saves for the backward pass (parameters aside)."""

    def __init__(self, model: nn.Module):
        self.skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set = set()
        self.bytes = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.skip and key not in self.seen:
            self.seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    def context(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


def _allocator_peak(prof: profile) -> int:
    """The largest sum of the CPU allocator's allocations minus frees while ``prof`` ran."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()
            peak = max(peak, live)
    return peak


def measure_training_step(
    model: nn.Module, batch: Any, autocast_dtype: Optional[torch.dtype] = None
) -> StepCost:
    """One training forward (``model(batch)``, a dict of losses) and backward pass on CPU.

    The trainable parameters' gradients are allocated (zeros) before the pass, so that
    ``activation_bytes`` holds only what grows with the windows: activations, autocast's
    weight copies and the backward pass's temporaries. ``autocast_dtype`` (e.g. bfloat16)
    runs the forward pass under CPU autocast. Gradients are left accumulated.
    """
    if not model.training:
        raise ValueError("measure_training_step needs a model in training mode")
    param_bytes, trainable_bytes = model_bytes(model)
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    saved = _SavedBytes(model)
    flops = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    autocast = (
        torch.autocast("cpu", dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, flops:
        cpu, start = time.process_time(), time.perf_counter()
        with saved.context(), autocast:
            losses = model(batch)
            loss = sum(losses.values())
        forward_s = time.perf_counter() - start
        forward_flops = flops.get_total_flops()
        start = time.perf_counter()
        loss.backward()
        backward_s = time.perf_counter() - start
        cpu = time.process_time() - cpu
    return StepCost(
        windows=len(batch),
        param_bytes=param_bytes,
        trainable_bytes=trainable_bytes,
        activation_bytes=_allocator_peak(prof),
        saved_bytes=saved.bytes,
        forward_flops=forward_flops,
        backward_flops=flops.get_total_flops() - forward_flops,
        forward_s=forward_s,
        backward_s=backward_s,
        cpu_s=cpu,
    )


def synthetic_window(
    num_frames: int, size: Sequence[int], num_classes: int, seed: int = 0
) -> Dict[str, Any]:
    """A training window as the video mapper gives it: ``num_frames`` random uint8 frames
    (window order), the random frame and random labels in ``[0, num_classes)``, all ``size``."""
    h, w = size
    gen = torch.Generator().manual_seed(seed)
    return {
        "frames": torch.randint(0, 256, (num_frames, 3, h, w), generator=gen, dtype=torch.uint8),
        "random_frame": torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8),
        "sem_seg": torch.randint(0, num_classes, (h, w), generator=gen),
        "height": h,
        "width": w,
    }


def measure_config_step(
    cfg: CfgNode, size: Sequence[int], amp: bool, windows: Sequence[int] = (1,), seed: int = 0
) -> Tuple[List[StepCost], nn.Module]:
    """:func:`measure_training_step` of ``cfg``'s model (built on CPU from ``cfg`` as given:
    pass MODEL.WEIGHTS "" for random weights) with the training vocabulary, once per entry of
    ``windows``, on that many :func:`synthetic_window` of ``size``, in fp32 or under bf16
    autocast (``amp``); returns the measurements and the model.

    A frozen text tower's embeddings are cached in training (one pass per vocabulary), so
    random unit vectors of their shape stand in for them."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    clip = model.clip
    names = model.train_class_texts
    if not clip.text_trainable:
        text = F.normalize(torch.randn(len(names), clip.text_channels, clip.embed_dim), dim=-1)
        text = text if clip.template_mode == "channels" else text[:, 0]
        clip.encode_vocabulary = lambda class_texts, template_mode=None: text
    frames = len(cfg.INPUT.TEMPORAL.REFERENCE_OFFSETS) + 1
    costs = []
    for count in windows:
        batch = [synthetic_window(frames, size, len(names), seed + i) for i in range(count)]
        costs.append(measure_training_step(model, batch, torch.bfloat16 if amp else None))
    return costs, model
