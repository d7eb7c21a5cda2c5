"""`numasweep host ...`: detect, show, save, check, list and plan host profiles.

A thin shim: every sub-command is a few lines over hostprofiles / placement.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os

import hostprofiles
from hostprofiles.errors import ProfileError
from hostprofiles.render import describe
from hostprofiles.saved import SHIPPED_DIR, profile_path, save_profile, user_dir

from .placement import ALIASES, MEM_POLICIES, POLICIES, plan


def _add_source(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--profile", metavar="NAME", help="a saved profile (see `numasweep host list`)")
    g.add_argument("--root", metavar="DIR", help="detect from a sysfs/procfs tree under DIR (default /)")
    p.add_argument("--profiles-dir", metavar="DIR", action="append",
                   help="look for saved profiles here (repeatable; default: user dir, then shipped)")


def _profile(args: argparse.Namespace) -> hostprofiles.HostProfile:
    if getattr(args, "profile", None):
        return hostprofiles.load_profile(args.profile, args.profiles_dir)
    return hostprofiles.detect(args.root or "/")


def _emit(args: argparse.Namespace, data: object, text: str) -> int:
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    p = _profile(args)
    return _emit(args, p.to_json(), describe(p))


def cmd_save(args: argparse.Namespace) -> int:
    p = _profile(args)
    if args.note:
        p = dataclasses.replace(p, notes=p.notes + tuple(args.note))
    path = save_profile(p, args.name, args.dir, overwrite=args.force)
    print(f"saved {args.name} ({p.fingerprint}) to {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for name in hostprofiles.list_profiles(args.profiles_dir):
        path = profile_path(name, args.profiles_dir)
        try:
            p = hostprofiles.load_profile(name, args.profiles_dir)
        except ProfileError as exc:  # one bad file shouldn't hide the others
            rows.append({"name": name, "path": str(path), "error": str(exc)})
            continue
        rows.append({"name": name, "path": str(path), "fingerprint": p.fingerprint, "cpu_model": p.cpu_model,
                     "sockets": p.sockets, "nodes": len(p.nodes), "numa_mode": p.numa_mode,
                     "cores": p.cores, "threads": len(p.cpus)})
    lines = [f"{'NAME':26} {'CPU':44} {'S':>2} {'NODES':>5} {'MODE':8} {'CORES':>5} {'THR':>4}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']:26} error: {r['error']}")
        else:
            lines.append(f"{r['name']:26} {(r['cpu_model'] or '?')[:44]:44} {r['sockets']:>2} {r['nodes']:>5} "
                         f"{r['numa_mode'][:8]:8} {r['cores']:>5} {r['threads']:>4}")
    lines.append(f"(user profiles: {user_dir()}; shipped: {SHIPPED_DIR})")
    return _emit(args, rows, "\n".join(lines))


def _plan(args: argparse.Namespace, p: hostprofiles.HostProfile):
    return plan(p, args.policy, threads=args.threads, smt=args.smt, cpus=args.cpus,
                mem_policy=args.mem_policy, fill=args.fill)


def cmd_plan(args: argparse.Namespace) -> int:
    p = _profile(args)
    slots = _plan(args, p)
    lines = [f"# {p.name} ({p.numa_mode}): {len(slots)} slot(s), policy {slots[0].policy}"]
    for s in slots:
        lines.append(f"{s.name:10} threads={s.threads:<4} cpus={s.cpulist:30} mem={s.mem_policy}"
                     f"{':' + ','.join(map(str, s.mem_nodes)) if s.mem_nodes else ''}   "
                     f"numactl {' '.join(s.numactl_args())}")
    return _emit(args, [s.to_json() for s in slots], "\n".join(lines))


def cmd_check(args: argparse.Namespace) -> int:
    p = _profile(args)
    model_bytes = args.model_bytes
    if args.model:
        try:
            model_bytes = os.path.getsize(args.model)
        except OSError as exc:
            raise ProfileError(f"{args.model}: {exc.strerror}") from None
    findings = []
    if args.policy:
        for slot in _plan(args, p):
            findings += [f for f in hostprofiles.check(p, slot, model_bytes) if f not in findings]
    else:
        findings = hostprofiles.check(p, None, model_bytes)
    text = "\n".join(f"{f.severity}: [{f.code}] {f.message}" for f in findings) or "no warnings"
    _emit(args, [vars(f) for f in findings], f"host {p.name} ({p.fingerprint})\n{text}")
    return 1 if args.strict and any(f.severity == "warning" for f in findings) else 0


def _add_plan_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--policy", required=required, choices=POLICIES + tuple(ALIASES), metavar="POLICY",
                   help=f"one of {', '.join(POLICIES)}")
    p.add_argument("--threads", "-t", type=int, help="threads (CPUs) per slot; default all cores of the slot")
    p.add_argument("--smt", action="store_true", help="also use SMT siblings (after all physical cores)")
    p.add_argument("--cpus", help="explicit CPU list for --policy cpus, e.g. 0-7,16")
    p.add_argument("--mem-policy", choices=MEM_POLICIES + ("first-touch",))
    p.add_argument("--fill", choices=("compact", "spread"), default="compact",
                   help="compact: one die after another; spread: round robin over dies")


def register(subparsers: argparse._SubParsersAction) -> None:
    host = subparsers.add_parser("host", help="detect, save, check and plan host profiles")
    sub = host.add_subparsers(dest="host_command", metavar="SUBCOMMAND")
    sub.required = True

    for name, help_ in (("detect", "detect this host (or --root DIR) and show it"),
                        ("show", "show a host: this one, --profile NAME or --root DIR")):
        p = sub.add_parser(name, help=help_)
        _add_source(p)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_show)

    p = sub.add_parser("save", help="detect (or load) a host and save it as NAME")
    p.add_argument("name")
    _add_source(p)
    p.add_argument("--dir", help="save into DIR (default: the user profile dir)")
    p.add_argument("--force", action="store_true", help="replace an existing profile")
    p.add_argument("--note", action="append", help="add a note (how or where it was detected); repeatable")
    p.set_defaults(func=cmd_save)

    p = sub.add_parser("list", help="list saved profiles")
    p.add_argument("--profiles-dir", metavar="DIR", action="append")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("check", help="warnings to see before a run (never changes the system)")
    _add_source(p)
    _add_plan_args(p, required=False)
    p.add_argument("--model", metavar="GGUF", help="warn if this file doesn't fit a slot's memory")
    p.add_argument("--model-bytes", type=int, help="model size in bytes (instead of --model)")
    p.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("plan", help="print pinned slots (numactl-style CPU lists)")
    _add_source(p)
    _add_plan_args(p, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
