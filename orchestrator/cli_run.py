"""`numasweep run | resume | submit | status | logs`: sweeps on local Ray or a cluster.

A thin shim over ``coordinator.run_sweep`` and Ray Jobs. ``run`` with no spec is
the embedded default main job (tiny model, this host, local Ray, k_repack on/off).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from engine import sweep_table
from engine.options import describe
from hostprofiles import format_cpulist
from orchestrator.errors import NumasweepError
from orchestrator.local_backend import LocalExecutor, local_host
from orchestrator.plan import build_plan
from orchestrator.report import write_report
from orchestrator.spec import DEFAULT_STORE, SweepSpec

# The embedded main job: short enough for a few minutes on 2 cores. K is q8_0 with
# flash attention so that the K-cache repack applies and on/off differ.
DEFAULT_JOB = {
    "label": "default: tiny model, k_repack on vs off",
    "model": {"shape": "tiny", "seed": 0},
    "sweep": {"c": 1024, "ub": 256, "tg": 32, "type_k": "q8_0", "type_v": "f16", "flash_attn": True,
              "k_repack": ["on", "off"]},
    "placement": {"policy": "per-node"},
}
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"


class RunError(NumasweepError):
    """A run or job command cannot do what was asked (no such run, no Ray job server, ...)."""


def _spec(args: argparse.Namespace) -> SweepSpec:
    spec = SweepSpec.from_toml(args.spec) if args.spec else SweepSpec.from_dict(DEFAULT_JOB)
    if args.store:
        spec = _with_store(spec, args.store)
    return spec


def _with_store(spec: SweepSpec, store: str) -> SweepSpec:
    return dataclasses.replace(spec, store=store)


def _executor(args: argparse.Namespace, spec: SweepSpec):
    """The executor and a function that tears it down."""
    if args.no_ray:
        ex = LocalExecutor()
        return ex, ex.close
    from orchestrator import ray_backend

    address = args.address or spec.address
    local = None
    if address or os.environ.get("RAY_ADDRESS"):  # inside a Ray Job the cluster is given
        note = ray_backend.connect(address)
        if note:
            print(note, file=sys.stderr)
    else:
        local = ray_backend.start_local(dashboard=args.dashboard)
        if local.dashboard_url:
            print(f"Ray dashboard: {local.dashboard_url}", flush=True)
    ex = ray_backend.RayExecutor()

    def stop() -> None:
        ex.close()
        ray_backend.shutdown(local)
    return ex, stop


def _embedded(args: argparse.Namespace, spec: SweepSpec) -> bool:
    """The run uses only this machine (embedded Ray or --no-ray), so it can be planned before
    anything starts."""
    return args.no_ray or not (args.address or spec.address or os.environ.get("RAY_ADDRESS"))


def precheck(args: argparse.Namespace, spec: SweepSpec) -> None:
    """Everything knowable before Ray, the store or a model file is touched: the models' headers,
    recorded replay files, and, for a run on this machine only, the whole plan against this host."""
    from engine.isa import check_env
    check_env()   # a NUMASWEEP_SIMD the engine children would refuse
    check_model_files(spec)
    check_replay_files(spec)
    if _embedded(args, spec):
        build_plan(spec, [local_host()], Path(spec.store).parent / "models")


def check_model_files(spec: SweepSpec) -> None:
    """A header-only parse of every model path (regular files: the spec checked that)."""
    from engine.inspect import check_model_file
    for m in spec.models:
        if m.path:
            check_model_file(m.path)


def check_replay_files(spec: SweepSpec) -> None:
    """A replay build's recorded rows must parse (bounded, like `numasweep import`)."""
    from orchestrator.importers import parse_sweep_bench_text, read_text

    for b in spec.builds:
        if b.replay:
            try:
                parse_sweep_bench_text(read_text(b.replay)[1], b.replay)
            except NumasweepError as exc:
                raise RunError(f"backend.replay: {exc}") from None


def _execute(args: argparse.Namespace, spec: SweepSpec, run_id: int | None) -> int:
    from orchestrator.coordinator import run_sweep
    from orchestrator.progress import RunProgress
    from orchestrator.store import Store

    precheck(args, spec)
    say = None if args.quiet else RunProgress()  # live on stderr; plain lines when not a terminal
    executor, stop = _executor(args, spec)
    try:
        result = run_sweep(spec, executor, spec.store, run_id=run_id, progress=say)
    finally:
        if say is not None:
            say.close()
        stop()
    with Store.open(spec.store) as store:
        points = store.points(result.run_id)
        print(render_tables(points))
        if points and not args.no_report:  # --out, else a new directory next to the store (never overwritten)
            print(f"report: {Path(write_report(store, [result.run_id], args.out)).resolve()}")
    print(f"run {result.run_id}: {result.status} ({result.stored} of {result.expected} points stored in {spec.store})")
    return 0 if result.status == "ok" else 1


def render_tables(points: list[dict]) -> str:
    """One sweep-bench table per (host, slot, build, settings), with the settings that name it."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["host_name"], p["slot"], p.get("build"), p["settings_key"]), []).append(p)
    out = []
    for (host, slot, build, _), rows in groups.items():
        s = rows[0]["settings"]
        out.append(f"\n{host}/{slot}: {build or ''} model={s.get('model')} "
                   f"{describe(s, ('threads', 'threads_batch', 'type_k', 'type_v', 'flash_attn', 'k_repack', 'rtr', 'fmoe', 'mla', 'amb'))} "
                   f"cpus={rows[0]['verified_cpus']} mem={rows[0]['verified_mems']}"
                   + (" [simulated]" if rows[0]["simulated"] else ""))
        body = [sweep_table.cells(r["pp"], r["tg"], r["n_kv"], r["t_pp"], r["speed_pp"], r["t_tg"], r["speed_tg"])
                + (str(r["rep"]), "" if r["noise"] is None else f"{r['noise']:.0%}")
                for r in sorted(rows, key=lambda r: (r["n_kv"], r["rep"]))]
        out.append(sweep_table.render(body, extra=("rep", "noise")))
    return "\n".join(out)


def cmd_run(args: argparse.Namespace) -> int:
    spec = _spec(args)
    if args.dry_run:
        return dry_run(args, spec)
    return _execute(args, spec, None)


def dry_run(args: argparse.Namespace, spec: SweepSpec) -> int:
    """Validate and print the plan (hosts, slots, CPUs, memory binding, the exact argv per job)
    without starting anything: against --host-profile, else the spec's [hosts] profiles, else
    this machine."""
    from hostprofiles import load_profile
    from orchestrator import backends, pin
    from orchestrator.jobs import HostInfo

    check_model_files(spec)
    names = [args.host_profile] if args.host_profile else list(spec.hosts.profiles)
    if names:
        hosts = []
        for i, name in enumerate(names):
            prof = _load_profile(name, load_profile)
            hosts.append(HostInfo(key=f"profile-{i}", profile=prof, labels={}, simulated=False,
                                  real_cpus=tuple(c.id for c in prof.cpus), real_nodes=tuple(n.id for n in prof.nodes)))
    else:
        hosts = [local_host()]
    plan = build_plan(spec, hosts, Path(spec.store).parent / "models")
    print(f"plan: {len(plan.slots)} slot(s), {len(plan.jobs)} job(s), builds {', '.join(b.name for b in spec.builds)}, "
          f"{spec.repetitions} repetition(s); store {spec.store} (nothing run)")
    for sp in plan.slots:
        print(f"\nhost {sp.host_name} ({sp.host.profile.name}): slot {sp.slot.name} cpus="
              f"{format_cpulist(sp.slot.cpus)} threads={sp.slot.threads} mem={sp.slot.mem_policy}:"
              f"{format_cpulist(sp.slot.mem_nodes)}")
        for job in sp.jobs:
            argv = pin.launcher_argv(sp.slot.cpus, sp.slot.mem_policy, sp.slot.mem_nodes,
                                     max(job.threads, job.threads_batch), backends.get(job.build.kind).argv(job))
            print(f"  job {job.index} rep {job.rep} {job.build.name}: {shlex.join(argv)}")
    return 0


def _load_profile(name: str, load_profile):
    from hostprofiles import HostProfile
    if name.endswith(".json"):
        try:
            return HostProfile.from_json(json.loads(Path(name).read_text()))
        except (OSError, ValueError) as exc:
            raise RunError(f"--host-profile {name}: {exc}") from None
    return load_profile(name)


def cmd_resume(args: argparse.Namespace) -> int:
    from orchestrator.store import Store

    store_path = args.store or DEFAULT_STORE
    if not Path(store_path).is_file():
        raise RunError(f"--store {store_path}: no such results store")
    with Store.open(store_path) as store:
        run = store.run(args.run_id)
    if run["source"] != "numasweep" or not run["spec"]:
        raise RunError(f"run {args.run_id} was imported ({run['source']}), not measured: nothing to resume")
    spec = _with_store(SweepSpec.from_dict(run["spec"], base=Path(run["settings"].get("spec_dir", "."))), store_path)
    return _execute(args, spec, args.run_id)


# -- Ray Jobs ------------------------------------------------------------------
def _client(address: str):
    from orchestrator import cluster_auth

    note = cluster_auth.apply(address)  # before Ray is imported: it reads the token mode then
    if note:
        print(note, file=sys.stderr)
    from orchestrator import ray_backend

    try:
        return ray_backend.job_client(address)
    except PermissionError as exc:
        raise RunError(f"{address}: refused: {exc} (this cluster uses Ray token auth: set RAY_AUTH_MODE=token and "
                       "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)") from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RunError(f"no Ray job server at {address}: {str(exc).splitlines()[0]}") from None


def cmd_submit(args: argparse.Namespace) -> int:
    spec = SweepSpec.from_toml(args.spec)  # validate here, before anything is submitted
    store = str(Path(args.store or spec.store).resolve())
    # The venv's absolute python: the job's shell does not have this venv on PATH.
    argv = [sys.executable, "-m", "orchestrator", "run", str(Path(args.spec).resolve()), "--store", store]
    if args.no_report:
        argv.append("--no-report")
    job = _client(args.address).submit_job(entrypoint=shlex.join(argv), entrypoint_num_cpus=0,
                                           metadata={"numasweep_spec": str(Path(args.spec).resolve())})
    print(job)
    print(f"follow it with: numasweep logs {job} --follow --address {args.address}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args.address)
    if args.job:
        try:
            print(f"{args.job}: {client.get_job_status(args.job).value}")
        except RuntimeError as exc:
            raise RunError(f"job {args.job}: {str(exc).splitlines()[0]}") from None
        return 0
    for info in client.list_jobs():
        print(f"{info.submission_id or info.job_id}  {info.status.value:<9}  {info.entrypoint}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args.address)
    try:
        if not args.follow:
            print(client.get_job_logs(args.job), end="")
            return 0
        import asyncio

        async def follow() -> None:
            async for chunk in client.tail_job_logs(args.job):
                print(chunk, end="", flush=True)
        asyncio.run(follow())
    except RuntimeError as exc:
        raise RunError(f"job {args.job}: {str(exc).splitlines()[0]}") from None
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    def run_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", default=None, help=f"results store (default: the spec's, else {DEFAULT_STORE})")
        p.add_argument("--address", default=None,
                       help="Ray cluster to join (default: start an embedded Ray on 127.0.0.1)")
        p.add_argument("--no-ray", action="store_true", help="run the slots as local pinned processes, no Ray")
        p.add_argument("--dashboard", action="store_true", help="embedded Ray: also start its dashboard (127.0.0.1)")
        p.add_argument("--no-report", action="store_true", help="do not write the HTML/Markdown report")
        p.add_argument("--out", metavar="DIR", default=None,
                       help="report directory (default: a new one next to the store, <store>-reports/run-N)")
        p.add_argument("-q", "--quiet", action="store_true", help="no live progress on stderr")

    p = sub.add_parser("run", help="run a sweep spec (default: the embedded main job) on Ray")
    p.add_argument("spec", nargs="?", help="sweep spec TOML (see examples/); none = the default main job")
    run_flags(p)
    p.add_argument("--dry-run", action="store_true",
                   help="validate and print the plan (hosts, slots, CPUs, memory, argv per job); run nothing")
    p.add_argument("--host-profile", metavar="NAME|FILE", default=None,
                   help="--dry-run: plan against this saved profile (default: the spec's [hosts] profiles, "
                        "else this machine)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="finish an interrupted or partial run")
    p.add_argument("run_id", type=int)
    run_flags(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("submit", help="submit a sweep spec as a Ray Job")
    p.add_argument("spec")
    p.add_argument("--address", default=DEFAULT_DASHBOARD, help=f"Ray dashboard / job server (default {DEFAULT_DASHBOARD})")
    p.add_argument("--store", default=None, help="results store on the head node (default: the spec's)")
    p.add_argument("--no-report", action="store_true")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="status of submitted Ray Jobs")
    p.add_argument("job", nargs="?")
    p.add_argument("--address", default=DEFAULT_DASHBOARD)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="logs of a submitted Ray Job")
    p.add_argument("job")
    p.add_argument("--follow", action="store_true")
    p.add_argument("--address", default=DEFAULT_DASHBOARD)
    p.set_defaults(func=cmd_logs)
