"""`numasweep fleet up | status | down | token | stop-host | start-host`: a simulated fleet.

A thin shim over ``orchestrator.fleet``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator import fleet, fleet_state


def _profiles(values: list[str]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def cmd_up(args: argparse.Namespace) -> int:
    use = True if args.netns else False if args.loopback else None
    fleet.up(_profiles(args.simulate or []), name=args.name, use_netns=use, housekeeping=args.housekeeping_cpus,
             subnet=args.subnet, say=lambda line: print(line, flush=True))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = fleet.status(args.name)
    for line in fleet.describe(state):
        print(line)
    if args.address:
        print(state.run_address)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    fleet.down(args.name)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    state = fleet.status(args.name)
    print(state.token_path if args.path else Path(state.token_path).read_text().strip())
    return 0


def cmd_stop_host(args: argparse.Namespace) -> int:
    fleet.stop_host(args.name, args.host)
    return 0


def cmd_start_host(args: argparse.Namespace) -> int:
    fleet.start_host(args.name, args.host)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="a simulated multi-host Ray cluster on this machine (network namespaces)")
    fs = p.add_subparsers(dest="fleet_command", metavar="ACTION")
    fs.required = True

    def named(q: argparse.ArgumentParser) -> None:
        q.add_argument("--name", default="default", help="fleet name (default: default); state in "
                       f"{fleet_state.state_root()}/fleets/NAME.json ($NUMASWEEP_STATE_DIR)")

    q = fs.add_parser("up", help="start one Ray node per simulated host (the first is the head)")
    q.add_argument("--simulate", action="append", metavar="PROFILE[,PROFILE...]",
                   help="saved host profiles (numasweep host list), one host each; repeatable")
    mode = q.add_mutually_exclusive_group()
    mode.add_argument("--netns", action="store_true", help="require network namespaces (default: when possible)")
    mode.add_argument("--loopback", action="store_true", help="share this machine's loopback (no namespaces)")
    q.add_argument("--housekeeping-cpus", default="auto", metavar="auto|none|LIST",
                   help="CPUs for Ray's own processes and the worker actors, kept out of the slots "
                        "(auto: the last CPU when 4 or more are allowed)")
    q.add_argument("--subnet", default=None, help="IPv4 network for the bridge (default: a free /24 of 10.77.0.0/16)")
    named(q)
    q.set_defaults(func=cmd_up)

    q = fs.add_parser("status", help="the fleet's hosts, addresses and processes")
    q.add_argument("--address", action="store_true", help="also print the run address alone on the last line")
    named(q)
    q.set_defaults(func=cmd_status)

    q = fs.add_parser("down", help="stop everything the fleet started and remove what it made (idempotent)")
    named(q)
    q.set_defaults(func=cmd_down)

    q = fs.add_parser("token", help="print the fleet's Ray auth token (give it to clients as RAY_AUTH_TOKEN)")
    q.add_argument("--path", action="store_true", help="print the token file's path instead")
    named(q)
    q.set_defaults(func=cmd_token)

    q = fs.add_parser("stop-host", help="kill one host's Ray node (simulates losing the host)")
    q.add_argument("host")
    named(q)
    q.set_defaults(func=cmd_stop_host)

    q = fs.add_parser("start-host", help="start a stopped host again")
    q.add_argument("host")
    named(q)
    q.set_defaults(func=cmd_start_host)
