"""The resumable training data stream of OV2VSS: batches that are a pure function of
``(seed, global sample position)``, so a run restarted with ``--resume`` sees exactly the data
of an uninterrupted one (docs/GETTING_STARTED.md, "Training at scale")."""

from __future__ import annotations

import atexit
import functools
import itertools
import signal
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..seeding import DATA_STREAM, derive_seed, seeded_rng

__all__ = ["ResumableTrainLoader", "TrainBatches", "build_resumable_train_loader"]


def _as_batch(batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return batch  # batches stay lists of dicts (detectron2 convention); no collation


def _ignore_signals(signals: Sequence[int], worker_id: int) -> None:
    """A loader worker's ``worker_init_fn``: ignore ``signals`` (blocked since the fork, so
    one sent meanwhile is dropped, not delivered to the handlers inherited from the parent)."""
    for s in signals:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


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
            self._order = np.random.default_rng([self.seed, epoch]).permutation(n)
            self._epoch = epoch
        return int(self._order[offset])

    def sample(self, position: int) -> Dict[str, Any]:
        idx = self.index(position)
        for attempt in range(len(self.dataset)):
            with seeded_rng(derive_seed(self.seed, DATA_STREAM, position, attempt)):
                out = self.mapper(self.dataset[idx])
            if out is not None:
                return out
            # the mapper skipped it: the next record, deterministically
            idx = (idx + 1) % len(self.dataset)
        raise RuntimeError("the training mapper returned None for every record of the dataset")

    def __iter__(self) -> Iterator[List[Dict[str, Any]]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        per_rank = self.total_batch_size // self.world_size
        for j in itertools.count(worker, num_workers):
            first = self.start_sample + j * self.total_batch_size + self.rank
            yield [self.sample(first + i * self.world_size) for i in range(per_rank)]


def _shut_down_workers(batches: Any) -> None:
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator
    if shutdown is not None:
        shutdown()


class TrainBatches:
    """The iterator of a :class:`ResumableTrainLoader`: its batches, and :meth:`close`.

    Args:
        batches: the DataLoader's iterator.
        close_at_exit: close it when the interpreter exits, if :meth:`close` was not called
            (loader workers that ignore SIGTERM would keep the exit waiting for them). Until
            then the workers live on, also when the iterator is dropped: left to the garbage
            collector, torch's own shutdown can lose its message to them.
    """

    def __init__(self, batches: Iterator[List[Dict[str, Any]]], close_at_exit: bool = False):
        self._batches = batches
        self._at_exit: Optional[Callable[[], None]] = None
        if close_at_exit:
            # registered after torch's and multiprocessing's exit handlers, so run before them
            self._at_exit = functools.partial(_shut_down_workers, batches)
            atexit.register(self._at_exit)

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> List[Dict[str, Any]]:
        return next(self._batches)

    def close(self) -> None:
        """Shut the loader worker processes down now (each after the batch it is building),
        rather than when the iterator is garbage-collected: workers that ignore SIGTERM
        (``ignore_signals``) would otherwise keep a process from exiting while, e.g., its
        traceback holds the iterator."""
        if self._at_exit is not None:
            atexit.unregister(self._at_exit)
            self._at_exit = None
        _shut_down_workers(self._batches)


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
        ignore_signals: signals the worker processes ignore from their start on (the
            trainer's stop signals: a signal sent to the whole process group, as Ctrl-C and
            SLURM do, must not kill a worker and so its training process before it saves;
            :mod:`ov2vss.engine.preemption`). The iterator's :meth:`TrainBatches.close` then
            shuts them down.
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
        ignore_signals: Sequence[int] = (),
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
        self.dataset = (
            dataset
            if isinstance(dataset, DatasetFromList)
            else DatasetFromList(dataset, copy=False)
        )
        self.mapper = mapper
        self.total_batch_size = total_batch_size
        self.seed = comm.shared_random_seed() if seed is None else int(seed)
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.ignore_signals = tuple(ignore_signals)
        self.start_sample = 0

    def __iter__(self) -> TrainBatches:
        stream = _SeededBatchStream(
            self.dataset,
            self.mapper,
            self.total_batch_size,
            self.seed,
            self.start_sample,
            self.shuffle,
        )
        signals = self.ignore_signals if self.num_workers > 0 else ()
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_as_batch,
            worker_init_fn=functools.partial(_ignore_signals, signals) if signals else None,
        )
        # the workers are forked here and inherit the mask; this process gets any signal
        # that arrived meanwhile when it is unblocked
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            return TrainBatches(iter(loader), close_at_exit=bool(signals))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def build_resumable_train_loader(
    cfg: CfgNode, mapper: Callable, ignore_signals: Sequence[int] = ()
) -> ResumableTrainLoader:
    """The training loader of ``cfg.DATASETS.TRAIN`` (see :class:`ResumableTrainLoader`,
    also for ``ignore_signals``); the seed is ``cfg.SEED`` (a shared random one when
    negative)."""
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
        ignore_signals=ignore_signals,
    )
