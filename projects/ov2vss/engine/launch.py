"""The command line around a ``main(args)``: detectron2's ``launch`` with one-line errors."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import torch.multiprocessing as mp
from detectron2.engine import launch
from detectron2.utils import comm

from ..errors import SetupError


def _run_reporting_setup_errors(main_func: Callable, *args: Any) -> Any:
    try:
        return main_func(*args)
    except SetupError as e:  # CheckpointError included
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
    except SetupError as e:  # CheckpointError included
        sys.exit(f"error: {e}")
    except mp.ProcessExitedException as e:
        sys.exit(f"error: a training process failed ({e}); its message is above")
