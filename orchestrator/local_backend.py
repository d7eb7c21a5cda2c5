"""The local executor: every slot on this machine as pinned children, no Ray.

What ``numasweep run --no-ray`` and the tests without Ray use; the Ray executor
(``orchestrator.ray_backend``) is the same interface over actors.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from hostprofiles import detect
from hostprofiles.cpulist import parse_cpulist
from orchestrator.jobs import HostInfo, Job, SlotConfig
from orchestrator.worker import SlotWorker


def local_host(root: str = "/") -> HostInfo:
    """This machine as the coordinator sees it (``root``: a fake sysfs tree)."""
    profile = detect(root)
    return HostInfo(key="local", profile=profile, labels={}, simulated=profile.simulated,
                    real_cpus=tuple(sorted(os.sched_getaffinity(0))), real_nodes=real_nodes())


def real_nodes(sysfs: str = "/sys/devices/system/node") -> tuple[int, ...]:
    try:
        return parse_cpulist(Path(sysfs, "online").read_text()) or (0,)
    except OSError:
        return (0,)


class LocalExecutor:
    """Runs every slot on this machine."""

    def __init__(self, root: str = "/") -> None:
        self.root = root

    def hosts(self) -> list[HostInfo]:
        return [local_host(self.root)]

    def open_slot(self, host: HostInfo, slot: SlotConfig) -> "LocalSlot":
        return LocalSlot(SlotWorker(slot))

    def close(self) -> None:
        pass


class LocalSlot:
    def __init__(self, worker: SlotWorker) -> None:
        self.worker = worker

    def run(self, job: Job) -> Iterator[dict]:
        return self.worker.run(job)

    def close(self) -> None:
        pass
