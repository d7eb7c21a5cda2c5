"""Placement planner: a pure function from a HostProfile to pinned slots.

``plan(profile, policy, ...)`` returns one Placement per slot (NUMA node, socket,
die/L3 group, the whole host, or an explicit CPU list). CPU ids are the profile's
own; for a simulated profile the orchestrator maps them onto real CPUs later.
Order inside a slot: the first thread of every core, die after die ("compact") or
dealt round robin over dies ("spread"), then SMT siblings (only with smt=True) in
the same core order. Never "the first N ids": on Genoa ids interleave across CCDs.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hostprofiles.cpulist import format_cpulist, parse_cpulist
from hostprofiles.errors import PlacementError
from hostprofiles.profile import HostProfile

POLICIES = ("per-node", "per-socket", "per-die", "whole-host", "cpus")
ALIASES = {"per-ccd": "per-die", "per-l3": "per-die", "node": "per-node", "socket": "per-socket",
           "die": "per-die", "host": "whole-host", "explicit": "cpus"}
MEM_POLICIES = ("bind", "interleave", "preferred", "none")
FILLS = ("compact", "spread")


@dataclass(frozen=True)
class Placement:
    """One pinned slot: run ``threads`` engine threads on ``cpus`` with this memory policy."""

    name: str  # "node0", "socket1", "die4", "host", "cpus"
    policy: str
    cpus: tuple[int, ...]  # exactly `threads` CPUs, in the order threads should take them
    mem_nodes: tuple[int, ...]  # () with mem_policy "none" (first touch)
    mem_policy: str  # bind / interleave / preferred / none
    threads: int
    numa_node: int | None  # the one node the CPUs sit on, else None
    socket: int | None  # the one socket the CPUs sit on, else None
    smt: bool  # SMT siblings were allowed

    def __post_init__(self) -> None:
        if self.mem_policy not in MEM_POLICIES:
            raise PlacementError(f"mem_policy {self.mem_policy!r} not one of {', '.join(MEM_POLICIES)}")
        if self.threads != len(self.cpus):
            raise PlacementError(f"{self.name}: threads={self.threads} but {len(self.cpus)} CPUs")

    @property
    def cpulist(self) -> str:
        return format_cpulist(self.cpus)

    def numactl_args(self) -> list[str]:
        """numactl argv (without the program), e.g. ['--physcpubind=0-42', '--membind=0']."""
        args = [f"--physcpubind={self.cpulist}"]
        nodes = ",".join(map(str, self.mem_nodes))
        if self.mem_policy == "bind":
            args.append(f"--membind={nodes}")
        elif self.mem_policy == "interleave":
            args.append(f"--interleave={nodes}")
        elif self.mem_policy == "preferred":
            args.append(f"--preferred={self.mem_nodes[0]}")
        return args

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpus"], d["mem_nodes"] = list(self.cpus), list(self.mem_nodes)
        d["cpulist"] = self.cpulist
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Placement:
        d = {k: v for k, v in data.items() if k != "cpulist"}
        try:
            return cls(**dict(d, cpus=tuple(d["cpus"]), mem_nodes=tuple(d["mem_nodes"])))
        except (KeyError, TypeError) as exc:
            raise PlacementError(f"bad placement record: {exc}") from None


def _order(profile: HostProfile, cpus: Sequence[int], smt: bool, fill: str) -> list[int]:
    """Primary threads first, then siblings; 'spread' deals cores round robin over dies."""
    by_id = profile.cpu_by_id
    primaries = [c for c in cpus if by_id[c].primary]
    # A slot may hold a sibling whose primary is elsewhere (explicit lists): keep it as a core.
    lone = [c for c in cpus if not by_id[c].primary and by_id[c].core not in set(cpus)]
    # Compact fills die after die (topology order, not id order: they differ on Genoa).
    die_of = {cpu: k for k, g in enumerate(profile.die_groups) for cpu in g}
    firsts = sorted(primaries + lone, key=lambda c: (die_of[c], c))
    if fill == "spread":
        per_die: dict[int, list[int]] = {}
        for c in firsts:
            per_die.setdefault(die_of[c], []).append(c)
        lanes = [per_die[k] for k in sorted(per_die)]
        firsts = [lane[i] for i in range(max(map(len, lanes), default=0)) for lane in lanes if i < len(lane)]
    if not smt:
        return firsts
    taken = set(firsts)
    rank = {c: i for i, c in enumerate(firsts)}
    rest = [c for c in cpus if c not in taken]
    return firsts + sorted(rest, key=lambda c: (rank.get(by_id[c].core, len(rank)), c))


def _groups(profile: HostProfile, policy: str) -> list[tuple[str, tuple[int, ...]]]:
    if policy == "per-node":
        if not profile.nodes:
            raise PlacementError(f"per-node is impossible on {profile.name!r}: it shows no NUMA nodes "
                                 "(use whole-host or cpus)")
        return [(f"node{n.id}", n.cpus) for n in profile.nodes if n.cpus]
    if policy == "per-socket":
        if not profile.socket_ids:
            raise PlacementError(f"per-socket is impossible on {profile.name!r}: no socket ids in its topology")
        return [(f"socket{s}", tuple(c.id for c in profile.cpus if c.socket == s)) for s in profile.socket_ids]
    if policy == "per-die":
        return [(f"die{k}", g) for k, g in enumerate(profile.die_groups)]
    return [("host", profile.cpu_ids)]


def _mem(profile: HostProfile, policy: str, cpus: Sequence[int], mem_policy: str | None) -> tuple[str, tuple]:
    nodes = tuple(sorted({profile.cpu_by_id[c].node for c in cpus} - {None}))
    if policy == "whole-host":
        mem_policy = mem_policy or ("interleave" if len(profile.nodes) > 1 else "none")
        nodes = tuple(n.id for n in profile.nodes) if mem_policy != "none" else ()
    mem_policy = mem_policy or ("bind" if nodes else "none")
    if mem_policy == "none":
        return "none", ()
    if mem_policy == "preferred":
        nodes = nodes[:1]  # the kernel prefers exactly one node
    if not nodes:
        raise PlacementError(f"mem_policy {mem_policy!r} needs NUMA nodes, and {profile.name!r} shows none")
    return mem_policy, nodes


def _positive_int(value: Any) -> int:
    try:
        n = operator.index(value)  # ints and numpy ints; not 2.5 or "8"
    except TypeError:
        n = 0
    if n < 1 or isinstance(value, bool):
        raise PlacementError(f"threads must be a positive integer, not {value!r}")
    return n


def plan(profile: HostProfile, policy: str, threads: int | None = None, smt: bool = False,
         cpus: Sequence[int] | str | None = None, mem_policy: str | None = None,
         fill: str = "compact") -> list[Placement]:
    """Slots for ``policy`` on ``profile``.

    threads: CPUs per slot, the same for every slot (default: every core of the
    slot, or every thread with smt=True); more than the smallest slot has is an error.
    cpus: the explicit list for policy "cpus" ("0-7,16" or ints), used as given
    (SMT siblings included, still physical cores first).
    mem_policy: bind/interleave/preferred/none; default bind to the slot's nodes
    (whole-host: interleave over all nodes, "none" = first touch).
    fill: "compact" fills one die/L3 group before the next; "spread" deals cores over dies.
    """
    policy = ALIASES.get(policy, policy)
    if policy not in POLICIES:
        raise PlacementError(f"unknown placement policy {policy!r} (choose from {', '.join(POLICIES)})")
    if mem_policy is not None and mem_policy not in MEM_POLICIES + ("first-touch",):
        raise PlacementError(f"unknown mem_policy {mem_policy!r} (choose from {', '.join(MEM_POLICIES)})")
    mem_policy = "none" if mem_policy == "first-touch" else mem_policy
    if fill not in FILLS:
        raise PlacementError(f"unknown fill {fill!r} (choose from {', '.join(FILLS)})")
    if threads is not None:
        threads = _positive_int(threads)
    if not profile.cpus:
        raise PlacementError(f"host {profile.name!r} lists no CPUs")
    if policy == "cpus":
        if cpus is None:
            raise PlacementError("policy 'cpus' needs a CPU list (e.g. cpus='0-7')")
        ids = parse_cpulist(cpus) if isinstance(cpus, str) else tuple(sorted(set(cpus)))
        missing = [c for c in ids if c not in profile.cpu_by_id]
        if missing or not ids:
            raise PlacementError(f"CPU {missing[0] if missing else '(none)'} is not on host {profile.name!r} "
                                 f"(its CPUs: {format_cpulist(profile.cpu_ids)})")
        groups = [("cpus", ids)]
    elif cpus is not None:
        raise PlacementError(f"a CPU list goes with policy 'cpus', not {policy!r}")
    else:
        groups = _groups(profile, policy)

    out = []
    for name, group in groups:
        # Explicit lists are taken as given (siblings included); other policies honour smt.
        use_smt = smt or policy == "cpus"
        order = _order(profile, group, use_smt, fill)
        if threads is None:
            chosen = order
        elif threads > len(order):
            cores = len(_order(profile, group, False, fill))
            has = (f"{len(order)} CPUs ({cores} cores with their SMT siblings)" if use_smt and len(order) > cores
                   else f"{cores} cores ({len(group)} with smt=True)" if len(group) > cores else f"{cores} cores")
            raise PlacementError(f"threads={threads} is more than slot {name} of {profile.name!r} has: {has}")
        else:
            chosen = order[:threads]
        mp, nodes = _mem(profile, policy, chosen, mem_policy)
        socks = {profile.cpu_by_id[c].socket for c in chosen}
        cpu_nodes = {profile.cpu_by_id[c].node for c in chosen}
        out.append(Placement(
            name=name, policy=policy, cpus=tuple(chosen), mem_nodes=nodes, mem_policy=mp,
            threads=len(chosen), numa_node=cpu_nodes.pop() if len(cpu_nodes) == 1 else None,
            socket=socks.pop() if len(socks) == 1 else None, smt=use_smt,
        ))
    return out
