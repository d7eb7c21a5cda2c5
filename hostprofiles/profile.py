"""HostProfile: what a benchmark host is (topology + tuning state), as frozen data.

A profile comes from ``detect()`` (sysfs/procfs under a root) or from a saved JSON
file. Everything here is a plain value; derived facts (sockets, SNC/NPS mode, SMT,
die groups, fingerprint) are computed from the stored fields, never stored twice.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .cpulist import format_cpulist
from .errors import ProfileError, SchemaError

SCHEMA_VERSION = 1

# Keys a profile JSON may carry besides the fields: written for readers, recomputed on load.
_DERIVED_KEYS = ("derived", "fingerprint")

# Fields that describe the detection, not the host: left out of the fingerprint, and
# the only fields a materialize -> detect round trip may change.
REAL_ROOT_ONLY_FIELDS = ("simulated",)
_NOT_FACTS = ("name", "notes", "mem_bandwidth_gbs") + REAL_ROOT_ONLY_FIELDS

GIB = 1 << 30


@dataclass(frozen=True)
class Cpu:
    """One logical CPU (hardware thread) as Linux numbers it."""

    id: int
    socket: int | None  # physical_package_id
    die: int | None  # die_id, socket-local (compute die / CCD where the kernel reports it)
    core_cpus: tuple[int, ...]  # core_cpus_list: this CPU and its SMT siblings
    l3: int | None  # index into HostProfile.l3_groups (shared L3 = CCD/CCX on AMD)
    node: int | None  # NUMA node

    @property
    def core(self) -> int:
        """Physical core id: the lowest CPU id among its threads."""
        return min(self.core_cpus) if self.core_cpus else self.id

    @property
    def primary(self) -> bool:
        """True for the first thread of its core (the one used when SMT is off)."""
        return self.id == self.core


@dataclass(frozen=True)
class Node:
    """One NUMA node: its CPUs, memory and distances (to HostProfile.nodes, in order)."""

    id: int
    cpus: tuple[int, ...]
    mem_total_bytes: int | None
    distances: tuple[int, ...]


@dataclass(frozen=True)
class MemBandwidth:
    """Memory bandwidth per NUMA node in GB/s (1e9 B/s), with where the number is from."""

    local: float | None  # a node reading its own memory
    remote: float | None  # a node reading another socket's memory
    kind: str  # "measured" or "theoretical"
    source: str

    def __post_init__(self) -> None:
        if self.kind not in ("measured", "theoretical"):
            raise ProfileError(f"mem_bandwidth_gbs.kind must be measured or theoretical, not {self.kind!r}")


@dataclass(frozen=True)
class HostProfile:
    name: str
    cpus: tuple[Cpu, ...]  # sorted by id
    nodes: tuple[Node, ...]  # sorted by id; () when the kernel shows no NUMA info
    cpu_vendor: str | None  # "GenuineIntel", "AuthenticAMD"
    cpu_model: str | None  # brand string
    cpu_flags: tuple[str, ...]  # sorted, /proc/cpuinfo spelling
    mem_total_bytes: int | None
    thp_enabled: str | None  # always / madvise / never
    thp_defrag: str | None
    numa_balancing: int | None
    governor: str | None  # one value, or "a,b" when CPUs differ
    epp: str | None  # energy_performance_preference, same convention
    cpufreq_driver: str | None
    boost: bool | None
    platform_profile: str | None
    kernel: str | None
    mem_bandwidth_gbs: MemBandwidth | None = None
    notes: tuple[str, ...] = ()  # how the profile was made, sources of numbers
    simulated: bool = False  # not detected live from "/" on the machine it describes

    def __post_init__(self) -> None:
        ids = [c.id for c in self.cpus]
        if ids != sorted(set(ids)):
            raise ProfileError(f"profile {self.name!r}: CPU ids must be unique and sorted")
        node_ids = [n.id for n in self.nodes]
        if node_ids != sorted(set(node_ids)):
            raise ProfileError(f"profile {self.name!r}: node ids must be unique and sorted")

    # ---- lookups and derived topology -------------------------------------------
    @cached_property
    def cpu_by_id(self) -> dict[int, Cpu]:
        return {c.id: c for c in self.cpus}

    @cached_property
    def node_by_id(self) -> dict[int, Node]:
        return {n.id: n for n in self.nodes}

    @property
    def cpu_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.cpus)

    @property
    def socket_ids(self) -> tuple[int, ...]:
        return tuple(sorted({c.socket for c in self.cpus if c.socket is not None}))

    @property
    def sockets(self) -> int:
        return len(self.socket_ids)

    @property
    def cores(self) -> int:
        """Physical cores."""
        return len({c.core for c in self.cpus})

    @property
    def threads_per_core(self) -> int:
        return max((len(c.core_cpus) for c in self.cpus), default=1)

    @property
    def smt(self) -> bool:
        return self.threads_per_core > 1

    def node_sockets(self, node_id: int) -> tuple[int, ...]:
        """Sockets whose CPUs sit in this node (two for AMD NPS0, none for memory-only)."""
        node = self.node_by_id[node_id]
        return tuple(sorted({self.cpu_by_id[i].socket for i in node.cpus
                             if i in self.cpu_by_id and self.cpu_by_id[i].socket is not None}))

    @property
    def nodes_per_socket(self) -> int | None:
        """NUMA nodes with CPUs per socket (SNC/NPS mode); None if unknown or uneven."""
        per: dict[int, int] = defaultdict(int)
        for n in self.nodes:
            socks = self.node_sockets(n.id)
            if len(socks) > 1:
                return None  # one node spans sockets (NPS0)
            if socks:
                per[socks[0]] += 1
        counts = set(per.values())
        return counts.pop() if len(counts) == 1 and len(per) == self.sockets else None

    @property
    def numa_mode(self) -> str:
        """'SNC3', 'SNC off', 'NPS4', ... in the vendor's words."""
        if not self.nodes:
            return "unknown (no NUMA info)"
        nps = self.nodes_per_socket
        if nps is None:
            spans = any(len(self.node_sockets(n.id)) > 1 for n in self.nodes)
            return "NPS0" if spans and self.cpu_vendor == "AuthenticAMD" else "uneven"
        if "hypervisor" in self.cpu_flags:
            return f"{nps} node(s)/socket (VM)"  # a guest's NUMA layout is the hypervisor's choice
        if self.cpu_vendor == "GenuineIntel":
            return "SNC off" if nps == 1 else f"SNC{nps}"
        if self.cpu_vendor == "AuthenticAMD":
            return f"NPS{nps}"
        return f"{nps} node(s)/socket"

    @cached_property
    def l3_groups(self) -> tuple[tuple[int, ...], ...]:
        groups: dict[int, list[int]] = defaultdict(list)
        for c in self.cpus:
            if c.l3 is not None:
                groups[c.l3].append(c.id)
        return tuple(tuple(groups[k]) for k in sorted(groups))

    @cached_property
    def die_groups(self) -> tuple[tuple[int, ...], ...]:
        """CPUs grouped by (socket, die_id, L3 group), ordered by first CPU.

        Why all three: Intel shows compute dies in die_id with one L3 per socket, AMD
        shows CCDs as L3 groups (die_id may be 0); the finer split wins either way.
        """
        groups: dict[tuple, list[int]] = defaultdict(list)
        for c in self.cpus:
            groups[(c.socket, c.die, c.l3)].append(c.id)
        return tuple(sorted((tuple(g) for g in groups.values()), key=lambda g: g[0]))

    @property
    def isa(self) -> dict[str, bool]:
        """The SIMD features the engine dispatches on."""
        f = set(self.cpu_flags)
        return {
            "avx2": "avx2" in f,
            "avx512f": "avx512f" in f,
            "avx512_vnni": bool(f & {"avx512_vnni", "avx512vnni"}),
            "avx512_bf16": bool(f & {"avx512_bf16", "avx512bf16"}),
            "avx_vnni": bool(f & {"avx_vnni", "avxvnni"}),
            "amx": bool(f & {"amx_int8", "amx_tile", "amx_bf16"}),
        }

    # ---- identity ----------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Stable hash of the facts that change results (topology, ISA, memory, tuning).

        Leaves out name, notes, bandwidth citations and `simulated`; host memory is
        rounded to GiB because MemTotal moves by a few MiB between boots.
        """
        facts = {k: v for k, v in _fields_json(self).items() if k not in _NOT_FACTS}
        facts["mem_total_bytes"] = _round_gib(self.mem_total_bytes)
        # Per-node MemTotal is left out: it drifts on VMs with lazily onlined memory.
        facts["nodes"] = [dict(n, mem_total_bytes=None) for n in facts["nodes"]]
        blob = json.dumps(facts, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ---- JSON ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Plain dict: schema_version, the fields, then derived facts for readers."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        out.update(_fields_json(self))
        out["fingerprint"] = self.fingerprint
        out["derived"] = {
            "sockets": self.sockets,
            "cores": self.cores,
            "threads": len(self.cpus),
            "smt": self.smt,
            "nodes_per_socket": self.nodes_per_socket,
            "numa_mode": self.numa_mode,
            "die_groups": [format_cpulist(g) for g in self.die_groups],
            "isa": self.isa,
        }
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HostProfile:
        if not isinstance(data, dict):
            raise SchemaError("host profile JSON must be an object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SchemaError(f"host profile schema_version {version!r} is not supported "
                              f"(this numasweep reads {SCHEMA_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        body = {k: v for k, v in data.items() if k != "schema_version" and k not in _DERIVED_KEYS}
        unknown = sorted(set(body) - names)
        if unknown:
            raise SchemaError(f"host profile has unknown key {unknown[0]!r}")
        try:
            body["cpus"] = tuple(Cpu(**dict(c, core_cpus=tuple(c["core_cpus"]))) for c in body["cpus"])
            body["nodes"] = tuple(Node(**dict(n, cpus=tuple(n["cpus"]), distances=tuple(n["distances"])))
                                  for n in body["nodes"])
            body["cpu_flags"] = tuple(body.get("cpu_flags") or ())
            body["notes"] = tuple(body.get("notes") or ())
            if body.get("mem_bandwidth_gbs") is not None:
                body["mem_bandwidth_gbs"] = MemBandwidth(**body["mem_bandwidth_gbs"])
            return cls(**body)
        except (KeyError, TypeError) as exc:
            raise SchemaError(f"host profile {data.get('name')!r} is malformed: {exc}") from None

    def dumps(self) -> str:
        """JSON text: nested objects indented, flat lists and flat records on one line,
        so a 512-CPU profile stays readable and diffs line by line."""
        return _pretty(self.to_json(), "") + "\n"

    @classmethod
    def loads(cls, text: str) -> HostProfile:
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise SchemaError(f"host profile is not valid JSON: {exc}") from None


def _fields_json(p: HostProfile) -> dict[str, Any]:
    d = dataclasses.asdict(p)
    # asdict keeps tuples; JSON wants lists (and equal dicts either way).
    return json.loads(json.dumps(d))


def _pretty(obj: Any, pad: str) -> str:
    flat = lambda v: not isinstance(v, (dict, list)) or (  # noqa: E731
        isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v))
    if isinstance(obj, dict) and obj and not all(flat(v) for v in obj.values()) or (
            isinstance(obj, dict) and len(obj) > 8):
        inner = pad + "  "
        items = [f"{inner}{json.dumps(k)}: {_pretty(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and not flat(obj):
        inner = pad + "  "
        return "[\n" + ",\n".join(inner + _pretty(v, inner) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, separators=(", ", ": "))


def _round_gib(n: int | None) -> int | None:
    return None if n is None else round(n / GIB)
