"""Seeds that make training repeatable and resumable: every random draw is a function of
``(seed, sample position)`` (data) or ``(seed, rank, iteration)`` (training step), so no RNG
state has to be stored in checkpoints (docs/GETTING_STARTED.md, "Resume")."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch

DATA_STREAM, TRAIN_STEP, MODEL_INIT = 0, 1, 2  # keep the seeds of the uses apart


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
