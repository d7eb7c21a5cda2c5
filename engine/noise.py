"""Foreign CPU load: how much of a set of CPUs *other* processes used while rows were measured.

Shared machines made peer numbers swing ±30% here, so every measured row carries a
``noise`` fraction: busy ticks of the CPUs (from /proc/stat) minus the measuring
process's own ticks (/proc/<pid>/stat), over the CPUs' capacity in that interval.
Used by ``bench`` (this process on its affinity CPUs) and by the orchestrator's pinned
worker (the engine child on its slot's CPUs); numba-free, so both import it cheaply.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

# Above this fraction a row is flagged: bench warns, reports say "Noisy".
NOISE_WARN = 0.10

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_busy_ticks(cpus, proc: str = "/proc") -> int:
    """Busy ticks (user+nice+system+irq+softirq+steal) summed over ``cpus``, from /proc/stat."""
    want = {f"cpu{c}" for c in cpus}
    total = 0
    for line in Path(proc, "stat").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in want:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, parts[1:9])
            total += user + nice + system + irq + softirq + steal
    return total


def process_ticks(pid: int, proc: str = "/proc") -> int:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    text = Path(proc, str(pid), "stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


class NoiseMeter:
    """Fraction of the CPUs' capacity used by processes other than ``pid`` between two marks."""

    def __init__(self, cpus, pid: int) -> None:
        self.cpus, self.pid = tuple(cpus), pid
        self._mark = self._sample()

    def _sample(self) -> tuple[float, int, int]:
        return time.monotonic(), cpu_busy_ticks(self.cpus), process_ticks(self.pid)

    def lap(self) -> float:
        """Foreign load since the previous lap (or construction), in [0, 1]."""
        now = self._sample()
        (t0, busy0, own0), (t1, busy1, own1) = self._mark, now
        self._mark = now
        capacity = (t1 - t0) * _CLK_TCK * len(self.cpus)
        if capacity <= 0:
            return 0.0
        return round(min(1.0, max(0.0, (busy1 - busy0 - (own1 - own0)) / capacity)), 4)


def self_meter() -> NoiseMeter:
    """A meter for this process on the CPUs it may run on (``bench`` without the orchestrator)."""
    return NoiseMeter(sorted(os.sched_getaffinity(0)), os.getpid())


def noise_warning(noise: float, where: str, threshold: float = NOISE_WARN) -> str | None:
    """The warning line for a noisy row, or None when the row is quiet enough."""
    if noise <= threshold:
        return None
    return (f"warning: {where}: other processes used {noise:.0%} of this run's CPUs while it was measured "
            f"(threshold {threshold:.0%}); its speeds are not trustworthy")
