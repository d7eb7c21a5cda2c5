"""Plain records shared by the coordinator, the workers and the Ray backend.

A *slot* is one pinned placement on one host; a *job* is one engine process (one
build at one point of the settings matrix, one repetition) on one slot, producing
one row at every timed N_KV depth. The faults at the bottom are what executors raise so that the
coordinator can decide what to re-run without knowing about Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.builds import BuildSpec
from orchestrator.spec import EngineSettings


@dataclass(frozen=True)
class SlotConfig:
    name: str                      # e.g. "node0"
    cpus: tuple[int, ...]          # CPUs the child is pinned to (this machine's real CPUs)
    mem_policy: str                # bind | interleave | preferred | none
    mem_nodes: tuple[int, ...]     # memory nodes on this machine
    threads: int                   # threads the slot runs with (<= len(cpus))
    placement: dict                # the planned placement, as recorded with each point
    simulated: bool = False        # the host is a simulated profile mapped onto real CPUs


@dataclass(frozen=True)
class Job:
    """One engine process: one build, one settings combination, one repetition, on one slot."""
    index: int                     # position in the run's plan (stable across resumes)
    host: str                      # executor's host key (Ray node id, "local")
    slot: str
    model: str                     # GGUF path (generated beforehand for synthetic shapes)
    model_name: str
    settings: EngineSettings       # resolved: threads/threads_batch/tg filled in for this slot
    build: BuildSpec
    rep: int = 0                   # the repetition this process measures
    model_shape: str | None = None  # synthetic model: the worker generates ``model`` if missing
    model_seed: int = 0

    @property
    def threads(self) -> int:
        return self.settings["threads"]

    @property
    def threads_batch(self) -> int:
        return self.settings["threads_batch"]

    def point_settings(self) -> dict:
        """Settings stored with every point of this job: what the build applied (engine.options
        names; None = the build's own, unknown), the model, and without tg (a Point field)."""
        s = self.build.applied(self.settings.as_dict())
        del s["tg"]
        s["model"] = self.model_name
        return s

    def expected(self) -> list[tuple[int, int]]:
        """(rep, n_kv) of every row this job measures."""
        return [(self.rep, n_kv) for n_kv in self.settings.n_kv_grid()]


@dataclass(frozen=True)
class HostInfo:
    key: str                       # executor's handle (Ray node id)
    profile: object                # hostprofiles.HostProfile
    labels: dict
    simulated: bool
    real_cpus: tuple[int, ...]     # CPUs this host's processes may really use
    real_nodes: tuple[int, ...]    # memory nodes that really exist there
    machine: str = ""              # the real machine (boot id); "" = unknown, assume its own
    housekeeping: tuple[int, ...] = ()  # CPUs reserved for Ray's processes, left out of slots
    isolation: dict = field(default_factory=dict)  # orchestrator.isolation.facts() of the node


# -- faults ------------------------------------------------------------------
class WorkerLost(RuntimeError):
    """The worker or its engine process died (kill -9, crash): re-run its unfinished points."""


class HostLost(RuntimeError):
    """The host is gone from the cluster: its unfinished points cannot be measured."""


class JobFailed(RuntimeError):
    """The engine refused the job (bad input, exit 2) or a pinning check failed: not retried."""
