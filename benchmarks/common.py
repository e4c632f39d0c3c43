"""What the CPU benchmarks share: the repository's VSPW configs, resident-memory readings, a
per-mode meter, worker processes and the table printer (docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, Mapping, Optional, Sequence

__all__ = [
    "REPO",
    "VSPW_CONFIGS",
    "Meter",
    "per_frame",
    "print_table",
    "proc_status_kib",
    "reset_peak_rss",
    "run_worker",
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the paper's VSPW configs, relative to REPO
VSPW_CONFIGS = [
    "configs/vspw/ov2vss_R50.yaml",
    "configs/vspw/ov2vss_R101.yaml",
    "configs/vspw/ov2vss_vitb16.yaml",
    "configs/vspw/ov2vss_sam_vitb.yaml",
    "configs/vspw/ov2vss_sam_vitb_official.yaml",
]


def proc_status_kib(key: str) -> int:
    """A memory line of /proc/self/status (e.g. VmRSS, VmHWM) in KiB; 0 without /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so that a peak belongs to one call."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass


class Meter:
    """Wall time, CPU time and the largest transient RSS increase of the calls of one mode."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self.peak_kib = 0

    def __call__(self, fn: Callable):
        rss = proc_status_kib("VmRSS")
        reset_peak_rss()
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.peak_kib = max(self.peak_kib, proc_status_kib("VmHWM") - rss)
        return out


def per_frame(meters: Mapping[str, Meter], frames: Mapping[str, int]) -> Dict[str, Dict]:
    """Each mode's frame count, wall and CPU seconds per frame and peak RSS increase (MiB)."""
    return {
        mode: {
            "frames": frames[mode],
            "wall_s": meter.wall / frames[mode],
            "cpu_s": meter.cpu / frames[mode],
            "peak_mib": meter.peak_kib / 1024,
        }
        for mode, meter in meters.items()
    }


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` (the first is the header) as aligned columns with a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))


def run_worker(cmd: Sequence[str], config: str) -> Optional[Dict]:
    """Run a benchmark's worker process (one config, in a fresh process so that its memory
    peak is its own) and return the JSON object it printed last; None, with the tail of its
    stderr printed, when it failed."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(f"{config} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}\n")
        return None
    return json.loads(lines[-1])
