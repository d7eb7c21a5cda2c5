"""Jobs whose slots share real CPUs of one machine never run at the same time.

Simulated hosts (and the several slots of one simulated host) are pinned onto the few
real CPUs of the machine they run on; run together they would measure each other. A
job holds a lock per (machine, real CPU) of its slot while it runs, taken in one global
order so two jobs never wait on each other. Slots of real hosts have disjoint CPUs, so
their locks never contend.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator


class CpuGuard:
    def __init__(self) -> None:
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._mu = threading.Lock()

    def _lock(self, key: tuple[str, int]) -> threading.Lock:
        with self._mu:
            return self._locks.setdefault(key, threading.Lock())

    @contextlib.contextmanager
    def hold(self, machine: str, cpus) -> Iterator[None]:
        locks = [self._lock((machine, c)) for c in sorted(set(cpus))]
        for lock in locks:
            lock.acquire()
        try:
            yield
        finally:
            for lock in reversed(locks):
                lock.release()
