"""Planning: a spec onto discovered hosts, as slots and jobs, with no side effects.

Everything here is a pure function of the spec and the hosts' profiles, so a plan
that cannot run (a placement the host cannot give, more threads than a slot has)
fails with a SpecError before the store, the models or any process is touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from hostprofiles.errors import ProfileError
from orchestrator.jobs import HostInfo, Job, SlotConfig
from orchestrator.placement import plan as place
from orchestrator.point import canonical_json
from orchestrator.spec import SpecError, SweepSpec


class ModelRef(NamedTuple):
    path: str                  # GGUF path (synthetic ones under the store's models/)
    name: str
    shape: str | None = None   # synthetic: generated from (shape, seed) where missing
    seed: int = 0


@dataclass(frozen=True)
class SlotPlan:
    host: HostInfo
    host_name: str             # the store's host name (unique within the run)
    slot: SlotConfig
    jobs: tuple[Job, ...]


@dataclass(frozen=True)
class Plan:
    slots: tuple[SlotPlan, ...]
    models: tuple[ModelRef, ...]

    @property
    def jobs(self) -> list[Job]:
        return [j for sp in self.slots for j in sp.jobs]


def model_refs(spec: SweepSpec, models_dir: Path) -> tuple[ModelRef, ...]:
    out = []
    for m in spec.models:
        if m.path:
            out.append(ModelRef(m.path, m.name))
        else:
            path = str((models_dir / f"{m.shape}-seed{m.seed}.gguf").resolve())
            out.append(ModelRef(path, m.name, m.shape, m.seed))
    return tuple(out)


def _real(host: HostInfo, cpus, nodes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A simulated host's CPUs / memory nodes mapped onto this machine's (id modulo count); a real
    host's CPUs less its housekeeping CPUs (orchestrator.isolation)."""
    if not host.simulated:
        return tuple(c for c in cpus if c not in host.housekeeping), tuple(nodes)
    rc, rn = host.real_cpus, host.real_nodes or (0,)
    return (tuple(sorted({rc[c % len(rc)] for c in cpus})),
            tuple(sorted({rn[n % len(rn)] for n in nodes})))


def plan_slots(host: HostInfo, spec: SweepSpec) -> list[SlotConfig]:
    p = spec.placement
    try:
        placements = place(host.profile, p.policy, smt=p.smt, mem_policy=p.mem_policy, cpus=p.cpus)
    except ProfileError as exc:
        key = "placement.cpus" if p.cpus is not None else "placement.policy"
        raise SpecError(f"{key}: on host {host.profile.name}: {exc}") from None
    slots = []
    for pl in placements:
        cpus, nodes = _real(host, pl.cpus, pl.mem_nodes)
        if not cpus:
            raise SpecError(f"placement on host {host.profile.name}: slot {pl.name} has no CPU left outside the "
                            f"housekeeping CPUs {list(host.housekeeping)}")
        threads = min(pl.threads, len(cpus))
        record = pl.to_json()
        if host.simulated:
            record["real_cpus"], record["real_mem_nodes"] = list(cpus), list(nodes)
        slots.append(SlotConfig(name=pl.name, cpus=cpus, mem_policy=pl.mem_policy, mem_nodes=nodes,
                                threads=threads, placement=record, simulated=host.simulated))
    return slots


def plan_jobs(spec: SweepSpec, host: HostInfo, slot: SlotConfig, models, start: int) -> list[Job]:
    """The slot's jobs: per model and settings combination, every repetition, and per repetition
    the builds back to back, in list order on even repetitions and reversed on odd ones (drift
    hits every build alike). A build that fixes a swept setting runs each distinct combination
    once."""
    limit = len(slot.placement["cpus"])  # the host's own CPUs, simulated or not
    jobs: list[Job] = []
    seen: set[str] = set()
    for m in models:
        for s in spec.matrix:
            threads = s["threads"] or slot.placement["threads"]
            threads_batch = s["threads_batch"] or threads
            for key, value in (("sweep.threads", threads), ("sweep.threads_batch", threads_batch)):
                if value > limit:
                    raise SpecError(f"{key} = {value} is impossible on slot {slot.name} of host "
                                    f"{host.profile.name}: it has {limit} CPUs (allowed: 1..{limit})")
            settings = s.with_values(threads=threads, threads_batch=threads_batch)
            for rep in range(spec.repetitions):
                for build in (spec.builds if rep % 2 == 0 else spec.builds[::-1]):
                    key = canonical_json([m.name, build.name, rep, build.applied(settings.as_dict())])
                    if key in seen:
                        continue
                    seen.add(key)
                    jobs.append(Job(index=start + len(jobs), host=host.key, slot=slot.name, model=m.path,
                                    model_name=m.name, settings=settings, build=build, rep=rep,
                                    model_shape=m.shape, model_seed=m.seed))
    return jobs


HOST_LABEL = "numasweep-host"  # a node's own stable name (a fleet's hosts carry it): survives restarts


def host_names(hosts: list[HostInfo]) -> list[str]:
    """The node's host label, else profile names (hostnames when detected); repeated ones (simulated
    nodes) get their node key."""
    base = [h.labels.get(HOST_LABEL) or h.profile.name for h in hosts]
    count: dict[str, int] = {}
    for b in base:
        count[b] = count.get(b, 0) + 1
    return [b if count[b] == 1 else f"{b}@{h.key[:8]}" for b, h in zip(base, hosts)]


def select_hosts(spec: SweepSpec, hosts: list[HostInfo]) -> list[HostInfo]:
    chosen = [h for h in hosts if spec.hosts.matches(h.labels, h.profile.name)]
    if not chosen:
        raise SpecError("no host matches [hosts] (labels "
                        f"{dict(spec.hosts.labels) or 'any'}, profiles {list(spec.hosts.profiles) or 'any'}; "
                        f"hosts here: {', '.join(h.profile.name for h in hosts) or 'none'})")
    return chosen


def build_plan(spec: SweepSpec, hosts: list[HostInfo], models_dir: Path, names: list[str] | None = None) -> Plan:
    """The whole run's plan on ``hosts`` (already selected when ``names`` are given); SpecError if
    any part of it cannot run."""
    chosen = hosts if names is not None else select_hosts(spec, hosts)
    models = model_refs(spec, models_dir)
    slots: list[SlotPlan] = []
    n = 0
    for host, name in zip(chosen, names if names is not None else host_names(chosen)):
        for slot in plan_slots(host, spec):
            jobs = plan_jobs(spec, host, slot, models, n)
            n += len(jobs)
            slots.append(SlotPlan(host, name, slot, tuple(jobs)))
    return Plan(tuple(slots), models)
