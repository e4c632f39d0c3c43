"""What the CPU benchmarks share: resident-memory readings, a per-mode meter and the table
printer (docs/BENCHMARKS.md)."""

from __future__ import annotations

import time
from typing import Callable, Dict, Mapping, Sequence

__all__ = ["Meter", "per_frame", "print_table", "proc_status_kib", "reset_peak_rss"]


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
