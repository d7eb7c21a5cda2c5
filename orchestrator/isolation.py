"""Keeping Ray's own processes and the worker actor off a slot's CPUs, and saying what was done.

A pinned engine cannot flee foreign load, so whatever else runs on its CPUs is
measured with it. Two ways keep the orchestrator's own processes off them:

- **housekeeping CPUs**: a node started with ``NUMASWEEP_HOUSEKEEPING_CPUS=<list>`` (and
  its Ray processes pinned there, e.g. ``taskset -c <list> ray start ...``; `numasweep
  fleet up` does both) has those CPUs left out of every slot, and each worker actor
  moves itself onto them;
- otherwise each worker actor moves itself onto the node's CPUs outside its slot, if
  there are any; Ray's resource isolation (``ray start --enable-resource-isolation
  --system-reserved-cpu N``, cgroup v2) is detected and recorded when the raylet runs
  with it.

``facts()`` runs on each host (in the host agent) and reports what is really there.
"""
from __future__ import annotations

import os
from pathlib import Path

HOUSEKEEPING_ENV = "NUMASWEEP_HOUSEKEEPING_CPUS"
SLOT_CPUS_ENV = "NUMASWEEP_SLOT_CPUS"


def _cpus_env(name: str) -> tuple[int, ...]:
    from hostprofiles.cpulist import parse_cpulist

    value = os.environ.get(name, "").strip()
    return tuple(parse_cpulist(value)) if value else ()


def housekeeping() -> tuple[int, ...]:
    return _cpus_env(HOUSEKEEPING_ENV)


def slot_cpus() -> tuple[int, ...]:
    """CPUs this node's slots may use: $NUMASWEEP_SLOT_CPUS, else this process's affinity."""
    return _cpus_env(SLOT_CPUS_ENV) or tuple(sorted(os.sched_getaffinity(0)))


def cgroup_v2() -> bool:
    """A unified cgroup v2 hierarchy with the cpu controller (what Ray's resource isolation needs)."""
    try:
        return "cpu" in Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
    except OSError:
        return False


def _status_field(pid: int, key: str) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def facts(raylet_pid: int | None = None) -> dict:
    """What keeps Ray's processes off the slots on this node (run inside a Ray worker)."""
    pid = raylet_pid if raylet_pid is not None else os.getppid()  # workers are the raylet's children
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        argv = []
    is_raylet = bool(argv) and argv[0].endswith(b"raylet")
    weight = next((a.split(b"=", 1)[1].decode() for a in argv if a.startswith(b"--system-reserved-cpu-weight=")),
                  None)
    from hostprofiles.cpulist import format_cpulist

    hk = housekeeping()
    return {
        "housekeeping_cpus": format_cpulist(hk) if hk else None,
        "slot_cpus": format_cpulist(slot_cpus()),
        "allowed_cpus": format_cpulist(sorted(os.sched_getaffinity(0))),
        "ray_cpus": _status_field(pid, "Cpus_allowed_list") if is_raylet else None,
        "ray_resource_isolation": (b"--enable-resource-isolation" in argv) if is_raylet else None,
        "ray_reserved_cpu_weight": weight,
        "cgroup_v2": cgroup_v2(),
    }


def actor_cpus(slot: tuple[int, ...], allowed: tuple[int, ...], hk: tuple[int, ...]) -> tuple[int, ...]:
    """Where a slot's worker actor runs: the housekeeping CPUs, else the allowed CPUs outside the
    slot; () when there are none (it stays, sharing the slot's CPUs)."""
    if hk:
        return tuple(sorted(hk))
    return tuple(sorted(set(allowed) - set(slot)))


def describe(actor: tuple[int, ...]) -> str:
    from hostprofiles.cpulist import format_cpulist

    return f"cpus {format_cpulist(actor)}" if actor else "shares the slot's CPUs (no other CPU allowed)"


def move_process(cpus: tuple[int, ...]) -> tuple[int, ...]:
    """Set every thread of this process to ``cpus`` (sched_setaffinity is per thread); returns the
    affinity it has afterwards. Threads started later inherit it from their creator."""
    if cpus:
        for task in Path("/proc/self/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except OSError:
                pass  # a thread that just exited
    return tuple(sorted(os.sched_getaffinity(0)))
