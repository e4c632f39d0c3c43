#!/usr/bin/env python
"""Run every ``benchmarks/bench_*.py`` script in turn (``make benchmark``).

Each script runs in its own process and prints its own table; extra arguments are passed
to every script. The exit status is 1 when any script fails or misses its target.

    python benchmarks/run_all.py            # all of them
    python benchmarks/run_all.py --only memory streaming
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
# a script that reads another's results runs after it (bench_loader.py reads the s/iter that
# bench_train_step.py derives)
RUN_AFTER = {"bench_loader.py": "bench_train_step.py"}


def find_scripts(only: Optional[List[str]] = None) -> List[str]:
    """The bench_*.py scripts next to this file, sorted (then RUN_AFTER); ``only`` keeps names
    containing a word."""
    scripts = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    if only:
        scripts = [s for s in scripts if any(word in os.path.basename(s) for word in only)]
    for late, first in RUN_AFTER.items():
        names = [os.path.basename(s) for s in scripts]
        if late in names and first in names and names.index(late) < names.index(first):
            script = scripts.pop(names.index(late))
            scripts.insert(names.index(first), script)  # just after ``first``, moved up by one
    return scripts


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run every benchmarks/bench_*.py script.")
    parser.add_argument(
        "--only", nargs="+", help="run only the scripts whose name contains one of these words"
    )
    args, passthrough = parser.parse_known_args(argv)
    scripts = find_scripts(args.only)
    if not scripts:
        print(f"no benchmark script matches {args.only} in {HERE}", file=sys.stderr)
        return 1
    failed = []
    for script in scripts:
        name = os.path.basename(script)
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, script, *passthrough])
        print(f"=== {name}: exit {code}, {time.perf_counter() - start:.0f} s ===", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed or missed a target: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
