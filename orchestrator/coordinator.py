"""The coordinator: a planned spec dispatched onto executor slots, rows stored as they land.

Plain Python over an *executor* (``hosts()``, ``open_slot(host, slot)``, ``close()``):
``orchestrator.local_backend.LocalExecutor`` runs slots as this machine's children,
``orchestrator.ray_backend.RayExecutor`` in pinned Ray actors. The stages are kept apart:

1. plan (``orchestrator.plan``): hosts, slots and jobs, no side effects; a plan that
   cannot run is a SpecError and the store is never opened;
2. record: the store is opened, hosts, builds and the run written;
3. skip: what a resumed run already holds, by the store's point keys (``Store.done_keys``);
4. dispatch: one thread per slot runs its jobs; every row is checked and written in its
   own transaction the moment it arrives, so a crash keeps every finished point;
5. finish: the run's status and a note naming every missing point.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

from engine.progress import row_stats
from orchestrator import host_checks
from orchestrator.builds import git_commit, package_version
from orchestrator.cpuguard import CpuGuard
from orchestrator.errors import NumasweepError, StoreError
from orchestrator.jobs import HostInfo, HostLost, Job, JobFailed, SlotConfig, WorkerLost
from orchestrator.plan import Plan, SlotPlan, build_plan, host_names, model_refs, select_hosts
from orchestrator.point import Point, canonical_json, point_key, settings_key_for
from orchestrator.progress import ProgressEvent, settings_in_words, varying_keys
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


@dataclass
class _JobState:
    """What the dispatcher knows of one job: where it runs and which point keys are still due."""
    job: Job
    sp: SlotPlan
    host_id: int
    settings: dict                       # stored settings (computed once: the row hot path)
    keys: dict[tuple[int, int], tuple]   # (rep, n_kv) -> the point key it will be stored under
    left: set[tuple[int, int]] = field(default_factory=set)
    problem: str | None = None


def run_sweep(spec: SweepSpec, executor: Executor, store: Store | str | Path, *, run_id: int | None = None,
              progress: Callable[[str], None] | None = None, max_attempts: int = 3,
              models_dir: Path | None = None) -> RunResult:
    """Measure ``spec`` (or finish run ``run_id``) on ``executor``'s hosts; returns the outcome.

    ``store`` is a Store or a path; a path is opened (created) only once the plan holds.
    """
    say = progress or (lambda _line: None)
    models_dir = models_dir or Path(spec.store).parent / "models"
    hosts = select_hosts(spec, executor.hosts())
    names = host_names(hosts)
    build_plan(spec, hosts, models_dir, names)  # the whole plan holds before any host is asked anything
    # Model bytes per host: a host with other bytes (or none) is left out, one line each.
    needs_models = any(b.kind != "replay" for b in spec.builds)
    hosts, names, checks = host_checks.verify_models(executor, hosts, names, model_refs(spec, models_dir),
                                                     needs_models, say)
    plan = build_plan(spec, hosts, models_dir, names)
    checks.update(host_checks.isolation_record([(sp.host, sp.host_name, sp.slot) for sp in plan.slots]))
    if needs_models:
        ensure_models(plan)
    own = not isinstance(store, Store)
    db = Store.open(store) if own else store
    try:
        return _run(spec, plan, executor, db, run_id, say, max_attempts, checks)
    finally:
        if own:
            db.close()


def _run(spec: SweepSpec, plan: Plan, executor: Executor, store: Store, run_id: int | None,
         say: Callable[[str], None], max_attempts: int, checks: dict) -> RunResult:
    run_id, host_ids = record_run(store, spec, plan, run_id, checks)
    states = pending(store, run_id, plan, host_ids)
    expected = sum(len(st.left) for st in states)
    n_hosts = len({sp.host.key for sp in plan.slots})
    lanes: dict[str, list[int]] = {}  # per slot: points and jobs left (the ETA's plan)
    for st in states:
        lane = lanes.setdefault(_lane(st), [0, 0])
        lane[0] += len(st.left)
        lane[1] += 1
    say(ProgressEvent(f"run {run_id}: {n_hosts} host(s), {len(plan.slots)} slot(s), {expected} point(s) to measure",
                      "plan", run_id=run_id, total=expected, lanes={k: tuple(v) for k, v in lanes.items()}))
    t0 = time.monotonic()
    stored = dispatch(executor, store, run_id, states, say, max_attempts)
    missing, n_missing = _missing(states)
    if not missing:
        status, note = "ok", None
    else:
        status = "partial" if store.count_points(run_id) else "failed"
        note = f"missing {n_missing} point(s): " + "; ".join(missing)
    store.finish_run(run_id, status, note)
    say(ProgressEvent(f"run {run_id}: {status}, {stored} point(s) stored in {time.monotonic() - t0:.1f} s"
                      + (f"; {note}" if note else ""), "done"))
    return RunResult(run_id, status, stored, expected, tuple(missing), note)


def record_run(store: Store, spec: SweepSpec, plan: Plan, run_id: int | None,
               checks: dict | None = None) -> tuple[int, dict[str, int]]:
    """Hosts and the run in the store (a resumed run is marked running again). ``checks``: what
    the hosts reported before the run (model identity, isolation), kept in the run's settings."""
    host_ids = {}
    for sp in plan.slots:
        if sp.host.key not in host_ids:
            # Identical machines share a profile fingerprint; the store row is per machine.
            host_ids[sp.host.key] = store.upsert_host(
                fingerprint=f"{sp.host.profile.fingerprint}:{sp.host_name}", profile=sp.host.profile.to_json(),
                name=sp.host_name, simulated=sp.host.simulated)
    if run_id is None:
        run_id = store.create_run(
            settings={"models": [m.name for m in plan.models], "placement": spec.placement.policy,
                      "builds": [b.name for b in spec.builds], "repetitions": spec.repetitions,
                      "jobs": len(plan.jobs), "spec_dir": spec.base, **(checks or {})},
            spec=spec.source, label=spec.label, version=package_version(), git_commit=git_commit())
    else:
        store.set_run_status(run_id, "running")
    return run_id, host_ids


def pending(store: Store, run_id: int, plan: Plan, host_ids: dict[str, int]) -> list[_JobState]:
    """Every job with points not yet stored (resume skips the rest), keyed as the store keys them."""
    done = store.done_keys(run_id)
    out = []
    for sp in plan.slots:
        host_id = host_ids[sp.host.key]
        for job in sp.jobs:
            settings = job.point_settings()
            skey = settings_key_for(settings)
            pp, tg = job.settings["ub"], job.settings["tg"]
            keys = {e: point_key(host_id, sp.slot.name, job.build.name, skey, e[0], e[1], pp, tg)
                    for e in job.expected()}
            left = {e for e, k in keys.items() if k not in done}
            if left:
                out.append(_JobState(job, sp, host_id, settings, keys, left))
    return out


def dispatch(executor: Executor, store: Store, run_id: int, states: list[_JobState],
             say: Callable[[str], None], max_attempts: int) -> int:
    """Run every pending job, one thread per slot; store each row as it arrives."""
    by_slot: dict[tuple[str, str], list[_JobState]] = {}
    for st in states:
        by_slot.setdefault((st.sp.host.key, st.sp.slot.name), []).append(st)
    events: queue.Queue = queue.Queue()
    guard = CpuGuard()  # simulated hosts mapped onto the same real CPUs take turns
    threads = [threading.Thread(target=_slot_loop, args=(executor, sts[0].sp, [s.job for s in sts], events,
                                                         max_attempts, guard), daemon=True)
               for sts in by_slot.values()]
    for t in threads:
        t.start()
    by_index = {st.job.index: st for st in states}
    vary = varying_keys([st.settings for st in states])
    words = {st.job.index: f"{_lane(st)} {st.job.build.name} {settings_in_words(st.settings, vary)}" for st in states}
    build_ids: dict[str, int] = {}
    expected = sum(len(st.left) for st in states)
    stored, running = 0, len(threads)
    while running:
        kind, job, payload = events.get()
        if kind == "end":
            running -= 1
            continue
        st = by_index[job.index]
        if kind == "start":  # a job (or its retry) begins on its slot
            say(ProgressEvent(f"job {job.index}: {words[job.index]}", "job", lane=_lane(st), text=words[job.index],
                              rows=len(st.left)))
            continue
        if kind != "row":  # retry | failed | lost: keep the reason for the note
            st.problem = f"{kind}: {payload}"
            say(ProgressEvent(f"job {job.index} on {_lane(st)}: {kind}: {payload}", "problem"))
            continue
        try:
            point = _point(store, st, payload, build_ids)
        except StoreError as exc:  # a backend printed a row we cannot store
            st.problem = f"bad row: {exc}"
            continue
        if store.add_point(run_id, point):
            stored += 1
            st.left.discard((point.rep, point.n_kv))
            stats = row_stats(point.speed_pp, point.speed_tg, point.noise, point.n_kv, point.rep)
            say(ProgressEvent(f"[{stored}/{expected}] {words[job.index]} job {job.index} {stats}", "row",
                              lane=_lane(st), text=f"{words[job.index]} job {job.index}", stats=stats,
                              done=stored, total=expected))
    for t in threads:
        t.join()
    return stored


def _lane(st: _JobState) -> str:
    """A progress lane: one slot, whose jobs run one after another."""
    return f"{st.sp.host_name}/{st.sp.slot.name}"


def _point(store: Store, st: _JobState, payload: dict, build_ids: dict[str, int]) -> Point:
    ident = canonical_json(payload["build_identity"])
    if ident not in build_ids:
        build_ids[ident] = store.upsert_build(name=st.job.build.name, kind=st.job.build.kind,
                                              identity=payload["build_identity"])
    row = dict(payload["row"])
    row["rep"] = st.job.rep  # one process per repetition: the engine counts from 0
    return Point.from_sweep_row(
        row, settings=st.settings, host_id=st.host_id, slot=st.sp.slot.name, placement=st.sp.slot.placement,
        verified_cpus=payload["verified_cpus"], verified_mems=payload["verified_mems"], noise=payload["noise"],
        simulated=st.sp.host.simulated, build=st.job.build.name, build_id=build_ids[ident])


def ensure_models(plan: Plan) -> None:
    """Generate synthetic models here once, before the run exists (workers elsewhere do their own)."""
    from orchestrator.worker import ensure_model

    for m in plan.models:
        try:
            ensure_model(m.path, m.shape, m.seed)
        except JobFailed as exc:
            raise SpecError(f"model shape {m.shape!r}: {exc}") from None


def _missing(states: list[_JobState]) -> tuple[list[str], int]:
    """One line per job with points still missing, and how many points that is."""
    lines, total = [], 0
    for st in states:
        if st.left:
            total += len(st.left)
            kvs = sorted({kv for _, kv in st.left})
            lines.append(f"{st.sp.host_name}/{st.sp.slot.name} job {st.job.index} ({st.job.build.name} "
                         f"{st.job.model_name} {describe_job(st.job)} rep {st.job.rep}): {len(st.left)} point(s), "
                         f"n_kv {kvs[0]}..{kvs[-1]} [{st.problem or 'unknown'}]")
    return lines, total


def describe_job(job: Job) -> str:
    from engine.options import describe
    return describe(job.point_settings(), ("c", "ub", "threads", "threads_batch", "type_k", "flash_attn",
                                            "k_repack", "mla", "fmoe"))


def _slot_loop(executor: Executor, sp: SlotPlan, jobs: list[Job], events: queue.Queue, max_attempts: int,
               guard: CpuGuard) -> None:
    """One thread per slot: its jobs in order; WorkerLost is retried, HostLost ends the slot."""
    slot = None
    try:
        slot = executor.open_slot(sp.host, sp.slot)
        for i, job in enumerate(jobs):
            for attempt in range(1, max_attempts + 1):
                events.put(("start", job, attempt))
                try:
                    with guard.hold(sp.host.machine or sp.host.key, sp.slot.cpus):
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
