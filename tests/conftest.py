import os

import pytest
import torch

# Small models on 2 cores: one thread is usually fastest and keeps timings stable.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
