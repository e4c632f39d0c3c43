"""Training engine of OV2VSS (used by train_net.py).

* early, clear errors about the user's files and config (:class:`SetupError`),
* :class:`OV2VSSTrainerBase`: detectron2's ``DefaultTrainer`` made ready for scale —
  DDP on CPU (gloo) as well as GPU, ``SOLVER.AMP`` on GPU (fp16) and CPU (bf16 autocast),
  atomic / safely loaded checkpoints, and runs that resume exactly: the data stream and
  every random draw are functions of ``(seed, sample position)`` / ``(seed, rank, iteration)``,
  so a run restarted with ``--resume`` ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import random
import sys
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, launch
from detectron2.engine.train_loop import HookBase, TrainerBase
from detectron2.solver.lr_scheduler import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .checkpoint import CheckpointError, OV2VSSCheckpointer

logger = logging.getLogger(__name__)


class SetupError(RuntimeError):
    """A problem with the user's files or config, reported without a deep traceback."""


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


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


# ---------------------------------------------------------------------------- randomness
_DATA_STREAM, _TRAIN_STEP = 0, 1  # keep the seeds of the two uses apart


def derive_seed(*keys: int) -> int:
    """A well-mixed 31-bit seed from non-negative integer keys (e.g. seed, rank, iteration)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)


def seed_all(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (torch: CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with the global RNGs seeded by ``seed``; restore their states afterwards,
    so the block neither depends on nor disturbs the randomness around it."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_all(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# ---------------------------------------------------------------------------- training data
def _as_batch(batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return batch  # batches stay lists of dicts (detectron2 convention); no collation


class _SeededBatchStream(IterableDataset):
    """This rank's endless stream of training batches, starting at a global sample position.

    The global sample stream is an endless sequence of permutations of the dataset, one per
    epoch drawn from ``(seed, epoch)``. A global batch takes the next ``B`` positions;
    rank ``r`` of ``w`` gets positions ``r, r + w, ...`` of it. Each sample is mapped with
    the RNGs seeded from ``(seed, position)``, and loader worker ``k`` of ``K`` builds the
    batches ``k, k + K, ...``, which the DataLoader returns in order. So the batches depend
    neither on the number of loader workers nor on where the stream was (re)started.
    """

    def __init__(
        self,
        dataset: DatasetFromList,
        mapper: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]],
        total_batch_size: int,
        seed: int,
        start_sample: int,
        shuffle: bool,
    ):
        self.dataset = dataset
        self.mapper = mapper
        self.total_batch_size = total_batch_size
        self.seed = seed
        self.start_sample = start_sample
        self.shuffle = shuffle
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self._epoch, self._order = -1, None

    def index(self, position: int) -> int:
        """Dataset index at a global stream position."""
        n = len(self.dataset)
        epoch, offset = divmod(position, n)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(n)
        return int(self._order[offset])

    def sample(self, position: int) -> Dict[str, Any]:
        idx = self.index(position)
        for attempt in range(len(self.dataset)):
            with seeded_rng(derive_seed(self.seed, _DATA_STREAM, position, attempt)):
                out = self.mapper(self.dataset[idx])
            if out is not None:
                return out
            idx = (idx + 1) % len(self.dataset)  # the mapper skipped it: the next record, deterministically
        raise RuntimeError("the training mapper returned None for every record of the dataset")

    def __iter__(self) -> Iterator[List[Dict[str, Any]]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        per_rank = self.total_batch_size // self.world_size
        for j in itertools.count(worker, num_workers):
            first = self.start_sample + j * self.total_batch_size + self.rank
            yield [self.sample(first + i * self.world_size) for i in range(per_rank)]


class ResumableTrainLoader:
    """Training batches (lists of mapped dicts, ``IMS_PER_BATCH / world_size`` per process)
    that are a pure function of ``seed`` and the global sample position.

    ``start_sample`` (set when resuming) makes the stream continue where a checkpoint left
    it, so a resumed run sees exactly the data of an uninterrupted one — also after a change
    of the number of processes or of loader workers. Clips are cropped to a fixed size, so
    detectron2's aspect-ratio grouping is not used.

    Args:
        dataset: the dataset dicts.
        mapper: turns a dict into a model input (may return None to skip a record).
        total_batch_size: images per iteration over all processes.
        seed: seed of the data order and augmentation (same on every process); None draws
            one shared by all processes.
        num_workers: DataLoader worker processes (0: map in the training process).
        shuffle: permute the dataset every epoch (else: dataset order).
    """

    def __init__(
        self,
        dataset: Sequence[Dict[str, Any]],
        mapper: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]],
        total_batch_size: int,
        *,
        seed: Optional[int] = None,
        num_workers: int = 0,
        shuffle: bool = True,
    ):
        world_size = comm.get_world_size()
        if total_batch_size <= 0 or total_batch_size % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={total_batch_size} must be a positive multiple of the "
                f"number of processes ({world_size})"
            )
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        # serialised: one compact buffer shared by the loader workers instead of copies of dicts
        self.dataset = dataset if isinstance(dataset, DatasetFromList) else DatasetFromList(dataset, copy=False)
        self.mapper = mapper
        self.total_batch_size = total_batch_size
        self.seed = comm.shared_random_seed() if seed is None else int(seed)
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.start_sample = 0

    def __iter__(self) -> Iterator[List[Dict[str, Any]]]:
        stream = _SeededBatchStream(
            self.dataset, self.mapper, self.total_batch_size, self.seed, self.start_sample, self.shuffle
        )
        return iter(DataLoader(stream, batch_size=None, num_workers=self.num_workers, collate_fn=_as_batch))


def build_resumable_train_loader(cfg: CfgNode, mapper: Callable) -> ResumableTrainLoader:
    """The training loader of ``cfg.DATASETS.TRAIN`` (see :class:`ResumableTrainLoader`);
    the seed is ``cfg.SEED`` (a shared random one when negative)."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r}: the resumable video "
            "loader implements TrainingSampler (shuffled epochs) only"
        )
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    return ResumableTrainLoader(
        dicts,
        mapper,
        cfg.SOLVER.IMS_PER_BATCH,
        seed=cfg.SEED if cfg.SEED >= 0 else None,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


# ---------------------------------------------------------------------------- distributed
def create_ddp_model(model: nn.Module, *, fp16_compression: bool = False, **kwargs: Any) -> nn.Module:
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


def configure_cpu_threads(cfg: CfgNode) -> None:
    """With several CPU processes on a machine, split the cores between them (unless
    OMP_NUM_THREADS says otherwise): each would otherwise start one thread per core."""
    if cfg.MODEL.DEVICE != "cpu" or comm.get_local_size() <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))


# ---------------------------------------------------------------------------- mixed precision
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
            raise SetupError("SOLVER.AMP.ENABLED on CPU needs CPU autocast, which this PyTorch lacks")
        logger.info(
            "SOLVER.AMP.ENABLED on CPU: bfloat16 autocast (fp16 with a gradient scaler needs CUDA); "
            "it is faster only on CPUs with bf16 instructions (AVX512-BF16 / AMX)"
        )
        return CPUAutocastTrainer(model, data_loader, optimizer)
    raise SetupError(
        f"SOLVER.AMP.ENABLED: mixed precision is supported on cuda and cpu, not MODEL.DEVICE={cfg.MODEL.DEVICE}"
    )


# ---------------------------------------------------------------------------- trainer
class StepSeedHook(HookBase):
    """Seeds the global RNGs from ``(seed, rank, iteration)`` before every step, so random
    draws in the model (dropout, sampling) resume exactly without storing RNG states."""

    def before_step(self) -> None:
        seed_all(derive_seed(self.trainer.seed, _TRAIN_STEP, comm.get_rank(), self.trainer.iter))


class OV2VSSTrainerBase(DefaultTrainer):
    """``DefaultTrainer`` for runs that scale and resume (see the module docstring).

    Differences: a CPU-capable DDP wrapper (:func:`create_ddp_model`), mixed precision on
    CPU (:func:`build_step_trainer`), :class:`OV2VSSCheckpointer`, per-step seeding, and a
    checkpointed data position for :class:`ResumableTrainLoader` (subclasses build it in
    ``build_train_loader``). Evaluation should call :func:`sync_model_buffers` first.
    """

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__ would wrap CPU models with device_ids and assert CUDA for AMP
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        if isinstance(data_loader, ResumableTrainLoader):
            data_loader.seed = self.seed
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = OV2VSSCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self._samples_seen = 0  # global position of the data stream
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> List[HookBase]:
        return [StepSeedHook()] + super().build_hooks()

    def resume_or_load(self, resume: bool = True) -> None:
        """As in DefaultTrainer; a resumed run also continues the data stream and seeds."""
        self._samples_seen = 0
        super().resume_or_load(resume=resume)
        if isinstance(self.data_loader, ResumableTrainLoader):
            self.data_loader.start_sample = self._samples_seen
        if self.start_iter > 0 and isinstance(self.scheduler, LRMultiplier):
            # the optimizer holds the lr of the checkpoint's schedule; with another
            # SOLVER.MAX_ITER the next iteration must use the new schedule's value
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_lr()):
                group["lr"] = lr

    def run_step(self) -> None:
        super().run_step()
        self._samples_seen += self.cfg.SOLVER.IMS_PER_BATCH

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        ret["data"] = {"seed": self.seed, "samples_seen": self._samples_seen}
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        data = state_dict.get("data")
        if data is None:  # a checkpoint of another trainer: assume this run's batch size
            self._samples_seen = (state_dict["iteration"] + 1) * self.cfg.SOLVER.IMS_PER_BATCH
            return
        if self.cfg.SEED < 0:
            self.seed = int(data["seed"])
        elif self.cfg.SEED != data["seed"]:
            logger.warning(
                f"SEED={self.cfg.SEED} differs from the checkpoint's seed {data['seed']}: the resumed "
                "run continues with the new seed and will not match an uninterrupted run"
            )
        self._samples_seen = int(data["samples_seen"])
        if isinstance(self.data_loader, ResumableTrainLoader):
            self.data_loader.seed = self.seed


# ---------------------------------------------------------------------------- command line
def _run_reporting_setup_errors(main_func: Callable, *args: Any) -> Any:
    try:
        return main_func(*args)
    except (SetupError, CheckpointError) as e:
        print(f"error (rank {comm.get_rank()}): {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def launch_cli(main_func: Callable, args: Any) -> Any:
    """Run ``main_func(args)`` through detectron2's ``launch`` (``--num-gpus`` processes per
    machine: GPUs, or CPU processes with gloo when CUDA is hidden); problems with the user's
    files end the program with a one-line ``error: ...`` instead of a traceback."""
    multi = args.num_gpus * args.num_machines > 1
    func = functools.partial(_run_reporting_setup_errors, main_func) if multi else main_func
    try:
        return launch(
            func,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (SetupError, CheckpointError) as e:
        sys.exit(f"error: {e}")
    except mp.ProcessExitedException as e:
        sys.exit(f"error: a training process failed ({e}); its message is above")
