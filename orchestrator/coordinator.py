"""The coordinator: plans a spec onto hosts and slots, dispatches jobs, stores rows as they land.

Plain Python over an *executor* (``hosts()``, ``open_slot(host, slot)``,
``close()``): ``LocalExecutor`` below runs slots in this process's children;
``orchestrator.ray_backend.RayExecutor`` runs them in pinned Ray actors. Every
row is written to the store in its own transaction the moment it arrives, so a
crash keeps every finished point; a resumed run skips what is stored.
"""
from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from orchestrator import host_checks
from orchestrator.cpuguard import CpuGuard
from orchestrator.errors import NumasweepError, StoreError
from orchestrator.jobs import HostInfo, HostLost, Job, JobFailed, SlotConfig, WorkerLost
from orchestrator.point import Point
from orchestrator.spec import SpecError, SweepSpec
from orchestrator.store import Store


class Slot(Protocol):
    def run(self, job: Job) -> Iterator[dict]: ...
    def close(self) -> None: ...


class Executor(Protocol):
    def hosts(self) -> list[HostInfo]: ...
    def open_slot(self, host: HostInfo, slot: SlotConfig) -> Slot: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class RunResult:
    run_id: int
    status: str            # ok | partial | failed
    stored: int            # points stored by this invocation
    expected: int          # points the plan measures (this invocation)
    missing: tuple[str, ...]  # one line per job with missing points
    note: str | None


# -- planning ----------------------------------------------------------------
def _real(host: HostInfo, cpus, nodes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A simulated host's CPUs / memory nodes mapped onto this machine's (id modulo count); a real
    host's CPUs less its housekeeping CPUs (orchestrator.isolation)."""
    if not host.simulated:
        return tuple(c for c in cpus if c not in host.housekeeping), tuple(nodes)
    rc, rn = host.real_cpus, host.real_nodes or (0,)
    return (tuple(sorted({rc[c % len(rc)] for c in cpus})),
            tuple(sorted({rn[n % len(rn)] for n in nodes})))


def plan_slots(host: HostInfo, spec: SweepSpec) -> list[SlotConfig]:
    from hostprofiles.errors import ProfileError
    from orchestrator.placement import plan

    p = spec.placement
    try:
        placements = plan(host.profile, p.policy, smt=p.smt, mem_policy=p.mem_policy,
                          cpus=p.cpus)
    except ProfileError as exc:
        raise SpecError(f"placement on host {host.profile.name}: {exc}") from None
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


def model_paths(spec: SweepSpec, models_dir: Path) -> list[tuple[str, str, str | None, int]]:
    """(path, name, shape, seed) per model; synthetic ones cached under ``models_dir``."""
    out = []
    for m in spec.models:
        if m.path:
            out.append((m.path, m.name, None, 0))
        else:
            out.append((str((models_dir / f"{m.shape}-seed{m.seed}.gguf").resolve()), m.name, m.shape, m.seed))
    return out


def plan_jobs(spec: SweepSpec, host: HostInfo, slot: SlotConfig, models, start: int) -> list[Job]:
    jobs = []
    for path, name, shape, mseed in models:
        for s in spec.matrix:
            threads = s.threads or slot.placement["threads"]
            threads_batch = s.threads_batch or threads
            limit = len(slot.placement["cpus"])  # the host's own CPUs, simulated or not
            for key, value in (("sweep.threads", threads), ("sweep.threads_batch", threads_batch)):
                if value > limit:
                    raise SpecError(f"{key} = {value} is impossible on slot {slot.name} of host "
                                    f"{host.profile.name}: it has {limit} CPUs (allowed: 1..{limit})")
            jobs.append(Job(index=start + len(jobs), host=host.key, slot=slot.name, model=path, model_name=name,
                            settings=s, threads=threads, threads_batch=threads_batch,
                            repetitions=spec.repetitions, seed=spec.seed, backend=spec.backend,
                            model_shape=shape, model_seed=mseed))
    return jobs


def _job_index_key(host_id: int, slot: str, pp: int, tg: int, settings: dict, names) -> str:
    return json.dumps([host_id, slot, pp, tg, {k: settings.get(k) for k in names}], sort_keys=True)


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _version() -> str | None:
    try:
        from importlib.metadata import version
        return version("numasweep")
    except Exception:  # not installed (running from a checkout)
        return None


# -- running -----------------------------------------------------------------
def run_sweep(spec: SweepSpec, executor: Executor, store: Store, *, run_id: int | None = None,
              progress: Callable[[str], None] | None = None, max_attempts: int = 3,
              models_dir: Path | None = None) -> RunResult:
    """Measure ``spec`` (or finish run ``run_id``) on ``executor``'s hosts; returns the outcome."""
    say = progress or (lambda _line: None)
    models = model_paths(spec, models_dir or Path(spec.store).parent / "models")

    hosts = [h for h in executor.hosts() if spec.hosts.matches(h.labels, h.profile.name)]
    if not hosts:
        raise SpecError("no host matches [hosts] (labels "
                        f"{dict(spec.hosts.labels) or 'any'}, profiles {list(spec.hosts.profiles) or 'any'})")
    # Model bytes per host, before anything is stored: a host with other bytes is left out.
    hosts, names, checks = host_checks.verify_models(executor, hosts, _host_names(hosts), models,
                                                     spec.backend.kind, say)
    plan: list[tuple[HostInfo, int, SlotConfig, list[Job]]] = []
    named_slots = []
    for host, name in zip(hosts, names):
        # Identical machines share a profile fingerprint; the store row is per machine.
        host_id = store.upsert_host(fingerprint=f"{host.profile.fingerprint}:{name}",
                                    profile=host.profile.to_json(), name=name, simulated=host.simulated)
        for slot in plan_slots(host, spec):
            jobs = plan_jobs(spec, host, slot, models, sum(len(p[3]) for p in plan))
            plan.append((host, host_id, slot, jobs))
            named_slots.append((host, name, slot))
    checks.update(host_checks.isolation_record(named_slots))

    if spec.backend.kind != "replay":  # replay reads no model
        _ensure_models(models)
    if run_id is None:
        run_id = store.create_run(settings={"models": [m[1] for m in models], "placement": spec.placement.policy,
                                            "backend": spec.backend.kind, "repetitions": spec.repetitions,
                                            "jobs": sum(len(p[3]) for p in plan), "spec_dir": spec.base,
                                            **checks},
                                  spec=spec.source, label=spec.label, version=_version(), git_commit=_git_commit())
    else:
        store.set_run_status(run_id, "running")

    # What is stored already (resume): (rep, n_kv) per job identity.
    names = tuple(plan[0][3][0].point_settings()) if plan and plan[0][3] else ()
    done: dict[str, set] = {}
    for p in store.points(run_id):
        key = _job_index_key(p["host_id"], p["slot"], p["pp"], p["tg"], p["settings"], names)
        done.setdefault(key, set()).add((p["rep"], p["n_kv"]))

    def job_key(host_id: int, job: Job) -> str:
        return _job_index_key(host_id, job.slot, job.settings.ubatch, job.settings.tg, job.point_settings(), names)

    todo: list[tuple[HostInfo, int, SlotConfig, list[Job]]] = []
    for host, host_id, slot, jobs in plan:
        left = [j for j in jobs if set(j.expected()) - done.get(job_key(host_id, j), set())]
        if left:
            todo.append((host, host_id, slot, left))
    expected = sum(len(set(j.expected()) - done.get(job_key(hid, j), set())) for _, hid, _, js in todo for j in js)
    say(f"run {run_id}: {len(hosts)} host(s), {len(plan)} slot(s), {expected} point(s) to measure")

    events: queue.Queue = queue.Queue()
    guard = CpuGuard()  # simulated hosts on the same real CPUs take turns
    threads = [threading.Thread(target=_slot_loop, args=(executor, host, slot, jobs, events, max_attempts, guard),
                                daemon=True) for host, _hid, slot, jobs in todo]
    for t in threads:
        t.start()
    by_job = {j.index: (host, hid, slot) for host, hid, slot, js in todo for j in js}
    # Per job, computed once: a row's hot path is one Point and one INSERT.
    settings_of = {j.index: j.point_settings() for _, _, _, js in todo for j in js}
    key_of = {j.index: job_key(hid, j) for _, hid, _, js in todo for j in js}
    stored, running, problems = 0, len(threads), {}
    t0 = time.monotonic()
    while running:
        kind, job, payload = events.get()
        if kind == "end":
            running -= 1
        elif kind == "row":
            host, host_id, slot = by_job[job.index]
            try:
                point = Point.from_sweep_row(
                    _stable(payload["row"]), settings=settings_of[job.index], host_id=host_id, slot=slot.name,
                    placement=slot.placement, verified_cpus=payload["verified_cpus"],
                    verified_mems=payload["verified_mems"], noise=payload["noise"], simulated=host.simulated)
            except StoreError as exc:  # a backend printed a row we cannot store
                problems[job.index] = f"bad row: {exc}"
                continue
            if store.add_point(run_id, point):
                stored += 1
                done.setdefault(key_of[job.index], set()).add((point.rep, point.n_kv))
                if progress is not None:  # no formatting when nobody listens (ingest at scale)
                    say(f"[{stored}/{expected}] {host.profile.name}/{slot.name} job {job.index} "
                        f"n_kv={point.n_kv} rep={point.rep} S_PP={point.speed_pp:.2f} "
                        f"S_TG={point.speed_tg:.2f} t/s noise={point.noise:.0%}")
        else:  # retry | failed | lost: keep the reason for the note
            problems[job.index] = f"{kind}: {payload}"
            say(f"job {job.index} on {by_job[job.index][0].profile.name}/{job.slot}: {kind}: {payload}")
    for t in threads:
        t.join()

    missing, n_missing = _missing(todo, done, key_of, problems)
    if not missing:
        status, note = "ok", None
    else:
        status = "partial" if store.count_points(run_id) else "failed"
        note = f"missing {n_missing} point(s): " + "; ".join(missing)
    store.finish_run(run_id, status, note)
    say(f"run {run_id}: {status}, {stored} point(s) stored in {time.monotonic() - t0:.1f} s"
        + (f"; {note}" if note else ""))
    return RunResult(run_id, status, stored, expected, tuple(missing), note)


HOST_LABEL = "numasweep-host"  # a node's own stable name (a fleet's hosts carry it): survives restarts


def _host_names(hosts: list[HostInfo]) -> list[str]:
    """The node's host label, else profile names (hostnames when detected); repeated ones (simulated
    nodes) get their node key."""
    base = [h.labels.get(HOST_LABEL) or h.profile.name for h in hosts]
    count: dict[str, int] = {}
    for b in base:
        count[b] = count.get(b, 0) + 1
    return [b if count[b] == 1 else f"{b}@{h.key[:8]}" for b, h in zip(base, hosts)]


def _ensure_models(models) -> None:
    """Generate synthetic models here once, before the run exists (workers elsewhere do their own)."""
    from orchestrator.worker import ensure_model

    for path, _name, shape, seed in models:
        try:
            ensure_model(path, shape, seed)
        except JobFailed as exc:
            raise SpecError(f"model shape {shape!r}: {exc}") from None


def _missing(todo, done: dict, key_of: dict, problems: dict) -> tuple[list[str], int]:
    """One line per job with points still missing, and how many points that is."""
    lines, total = [], 0
    for host, _host_id, slot, jobs in todo:
        for j in jobs:
            left = sorted(set(j.expected()) - done.get(key_of[j.index], set()))
            if left:
                total += len(left)
                kvs = sorted({kv for _, kv in left})
                lines.append(f"{host.profile.name}/{slot.name} job {j.index} ({_describe(j)}): {len(left)} "
                             f"point(s), n_kv {kvs[0]}..{kvs[-1]} [{problems.get(j.index, 'unknown')}]")
    return lines, total


# Row keys that are neither Point fields nor settings: measurements the Point cannot hold.
# Left in, they would become settings and give every row its own settings_key (breaking
# resume's identity). The scratch high-water mark is the running max of repack_scratch_mib.
_ROW_MEASUREMENTS = ("repack_scratch_hwm_mib",)


def _stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in _ROW_MEASUREMENTS}


def _describe(job: Job) -> str:
    s = job.settings
    return (f"{job.model_name} c={s.n_ctx} ub={s.ubatch} t={job.threads} tb={job.threads_batch} "
            f"ctk={s.type_k} fa={int(s.flash_attn)} k_repack={s.k_repack}")


def _slot_loop(executor: Executor, host: HostInfo, slot_cfg: SlotConfig, jobs: list[Job],
               events: queue.Queue, max_attempts: int, guard: CpuGuard) -> None:
    """One thread per slot: its jobs in order; WorkerLost is retried, HostLost ends the slot."""
    slot = None
    try:
        slot = executor.open_slot(host, slot_cfg)
        for i, job in enumerate(jobs):
            for attempt in range(1, max_attempts + 1):
                try:
                    with guard.hold(host.machine or host.key, slot_cfg.cpus):
                        for ev in slot.run(job):
                            events.put(("row", job, ev))
                    break
                except WorkerLost as exc:
                    kind = "retry" if attempt < max_attempts else "failed"
                    events.put((kind, job, f"{exc} (attempt {attempt} of {max_attempts})"))
                except HostLost as exc:
                    for rest in jobs[i:]:
                        events.put(("lost", rest, str(exc)))
                    return
                except (JobFailed, NumasweepError) as exc:
                    events.put(("failed", job, str(exc)))
                    break
    except HostLost as exc:
        for job in jobs:
            events.put(("lost", job, str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported in the run's note, never swallowed silently
        for job in jobs:
            events.put(("failed", job, f"{type(exc).__name__}: {exc}"))
    finally:
        if slot is not None:
            try:
                slot.close()
            except Exception:  # noqa: BLE001 - the slot may be on a lost host
                pass
        events.put(("end", None, None))


# -- local executor (no Ray): this machine, children pinned directly ---------------
class LocalExecutor:
    """Runs every slot on this machine; what ``numasweep bench`` and the tests without Ray use."""

    def __init__(self, root: str = "/") -> None:
        self.root = root

    def hosts(self) -> list[HostInfo]:
        import os

        from hostprofiles import detect

        profile = detect(self.root)
        return [HostInfo(key="local", profile=profile, labels={}, simulated=profile.simulated,
                         real_cpus=tuple(sorted(os.sched_getaffinity(0))), real_nodes=_real_nodes())]

    def open_slot(self, host: HostInfo, slot: SlotConfig):
        from orchestrator.worker import SlotWorker

        return _LocalSlot(SlotWorker(slot))

    def close(self) -> None:
        pass


class _LocalSlot:
    def __init__(self, worker) -> None:
        self.worker = worker

    def run(self, job: Job) -> Iterator[dict]:
        return self.worker.run(job)

    def close(self) -> None:
        pass


def _real_nodes(sysfs: str = "/sys/devices/system/node") -> tuple[int, ...]:
    from hostprofiles.cpulist import parse_cpulist

    try:
        return parse_cpulist(Path(sysfs, "online").read_text()) or (0,)
    except OSError:
        return (0,)
