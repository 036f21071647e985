"""CPU used by process trees and by the whole machine over a stretch of a benchmark (Linux ``/proc``).

A benchmark on a small machine is a fight for its cores between the system measured and its
baseline's neighbours; reporting each party's cores (CPU seconds per wall second) says who had them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (those gone count nothing)."""
    total = 0
    for pid in pids:
        if (fields := _stat_fields(pid)) is not None:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the machine spent on anything but idle and I/O wait, all cores together."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICKS


class CpuMeter:
    """Cores used by each named group of processes (and the machine) between ``start`` and ``stop``."""

    def __init__(self, groups: Mapping[str, Iterable[int]]) -> None:
        self.groups = {name: set(pids) for name, pids in groups.items()}
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _read(self) -> dict[str, float]:
        values = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        values["machine"] = machine_busy_seconds()
        return values

    def start(self) -> None:
        self._start = self._read()
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        end = self._read()
        return {name: (end[name] - self._start[name]) / wall for name in end}
