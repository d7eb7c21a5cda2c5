"""Build HostProfiles of machines we can't detect here, from a few public facts.

The shipped profiles in profiles/*.json (except dev-vm, which is a real detection)
are written by ``python -m hostprofiles.synth --write`` from MODELS below, and a
test checks the files still equal what this module builds. Linux numbering modelled
everywhere: CPU ids 0..C-1 are the first thread of each core, socket after socket;
C..2C-1 are their SMT siblings in the same order (what the kernel shows on 2-socket
Xeon and EPYC boards).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .profile import GIB, Cpu, HostProfile, MemBandwidth, Node


@dataclass(frozen=True)
class Machine:
    """A compact description of a host; ``build()`` expands it into every CPU."""

    name: str
    vendor: str
    model: str
    flags: str  # space-separated, /proc/cpuinfo spelling
    sockets: int
    dies: Sequence[int]  # cores per die (CCD / compute die) within one socket
    nodes_per_socket: int  # SNC / NPS mode; dies are split evenly over the nodes
    smt: bool
    die_in_die_id: bool  # the kernel reports the die in topology/die_id
    l3_per: str  # "die" (AMD CCD) or "socket" (Intel: one LLC per package, SNC or not)
    round_robin: bool  # cores enumerated round robin over dies (AMD MADT default)
    node_mem_gib: int
    distance_near: int  # other node, same socket
    distance_far: int  # other socket
    bandwidth: MemBandwidth | None
    notes: tuple[str, ...]
    thp_enabled: str | None = None
    thp_defrag: str | None = None
    numa_balancing: int | None = None
    platform_profile: str | None = None

    def _socket_order(self) -> list[int]:
        """Die index of each socket-local core number j, in enumeration order."""
        left = list(self.dies)
        order: list[int] = []
        if not self.round_robin:
            for d, n in enumerate(self.dies):
                order += [d] * n
            return order
        while any(left):
            for d in range(len(left)):
                if left[d]:
                    order.append(d)
                    left[d] -= 1
        return order

    def build(self) -> HostProfile:
        per_socket = sum(self.dies)
        n_cores = per_socket * self.sockets
        n_dies = len(self.dies)
        die_order = self._socket_order()
        node_of_die = [d * self.nodes_per_socket // n_dies for d in range(n_dies)]
        cpus = []
        for t in range(2 if self.smt else 1):
            for s in range(self.sockets):
                for j in range(per_socket):
                    core = s * per_socket + j
                    die = die_order[j]
                    l3 = s * n_dies + die if self.l3_per == "die" else s
                    cpus.append(Cpu(
                        id=core + t * n_cores,
                        socket=s,
                        die=die if self.die_in_die_id else 0,
                        core_cpus=(core, core + n_cores) if self.smt else (core,),
                        l3=l3,
                        node=s * self.nodes_per_socket + node_of_die[die],
                    ))
        n_nodes = self.sockets * self.nodes_per_socket
        nodes = []
        for n in range(n_nodes):
            dist = tuple(10 if m == n else self.distance_near if m // self.nodes_per_socket ==
                         n // self.nodes_per_socket else self.distance_far for m in range(n_nodes))
            nodes.append(Node(id=n, cpus=tuple(c.id for c in cpus if c.node == n),
                              mem_total_bytes=self.node_mem_gib * GIB, distances=dist))
        # L3 indices must follow the first-CPU order detect() uses.
        firsts = sorted({min(c.id for c in cpus if c.l3 == g) for g in {c.l3 for c in cpus}})
        renum = {next(c.l3 for c in cpus if c.id == f): k for k, f in enumerate(firsts)}
        cpus = sorted((Cpu(c.id, c.socket, c.die, c.core_cpus, renum[c.l3], c.node) for c in cpus),
                      key=lambda c: c.id)
        return HostProfile(
            name=self.name, cpus=tuple(cpus), nodes=tuple(nodes), cpu_vendor=self.vendor,
            cpu_model=self.model, cpu_flags=tuple(sorted(set(self.flags.split()))),
            mem_total_bytes=self.node_mem_gib * GIB * n_nodes, thp_enabled=self.thp_enabled,
            thp_defrag=self.thp_defrag, numa_balancing=self.numa_balancing, governor=None, epp=None,
            cpufreq_driver=None, boost=None, platform_profile=self.platform_profile, kernel=None,
            mem_bandwidth_gbs=self.bandwidth, notes=self.notes, simulated=True,
        )


# Flags: abridged to what /proc/cpuinfo shows on each family for the ISA that matters.
_BASE = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
         "sse2 ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid pni pclmulqdq "
         "monitor ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm abm "
         "bmi1 avx2 smep bmi2 rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves")
_AVX512 = ("avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512vbmi avx512_vbmi2 gfni vaes "
           "vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq avx512_bf16")
_GNR = f"{_BASE} {_AVX512} erms invpcid pku ospke waitpkg la57 rdpid movdiri movdir64b fsrm serialize " \
       "avx512_fp16 avx_vnni amx_bf16 amx_tile amx_int8 amx_fp16 hwp hwp_epp arch_capabilities"
_ZEN3 = f"{_BASE} mmxext fxsr_opt 3dnowprefetch sse4a misalignsse topoext perfctr_core cpb hw_pstate " \
        "ssbd ibpb vmmcall fsgsbase clzero xsaveerptr rdpru wbnoinvd umip pku ospke vaes vpclmulqdq rdpid fsrm"
_ZEN4 = f"{_ZEN3} {_AVX512} la57"

_NUMBERING = ("Numbering modelled on Linux: CPUs 0..C-1 are the first thread of each core, "
              "socket after socket; C..2C-1 their SMT siblings in the same order.")
_MEM = "Node memory sizes are an assumed DIMM population, not a measured host."
_FLAGS = "cpu_flags abridged to the family's ISA-relevant /proc/cpuinfo flags."
_SEED_TUNING = ("Tuning state from the seed log (ik-sweep-bench-xeon6980p-q8_0-32k.log): THP "
                "[always]/[always], numa_balancing 0, power profile performance; governor, EPP, "
                "boost and kernel not reported there (null).")
_GNR_DIES = ("3 compute dies per socket (43+43+42 cores), modelled in topology/die_id with one L3 "
             "per socket as Intel reports it; kernels that report die_id 0 on this part leave "
             "per-die placement equal to per-socket.")
_GENOA_RR = ("CPU numbers interleaved across CCDs and nodes, as with the AMD default MADT round-robin "
             "core enumeration: socket-local core j sits on CCD j % 12 (CCDs 0-2 = quadrant 0 ... "
             "9-11 = quadrant 3), so consecutive CPU ids are on different CCDs (and, in NPS4, on "
             "different nodes); SMT siblings are j + 192.")

MODELS = [
    Machine(
        name="xeon-6980p-2s-snc-off", vendor="GenuineIntel", model="Intel(R) Xeon(R) 6980P", flags=_GNR,
        sockets=2, dies=(43, 43, 42), nodes_per_socket=1, smt=True, die_in_die_id=True, l3_per="socket",
        round_robin=False, node_mem_gib=768, distance_near=12, distance_far=21,
        bandwidth=MemBandwidth(local=554.0, remote=247.0, kind="measured",
                               source="Intel MLC on a 2S Xeon 6980P, SNC disabled, as reported in the seed "
                                      "thread (ik_llama.cpp discussion of the DeepSeek-V3 sweep)"),
        notes=(_NUMBERING, _GNR_DIES, _SEED_TUNING, _MEM + " 12 x 64 GB DDR5-6400 per socket.", _FLAGS),
        thp_enabled="always", thp_defrag="always", numa_balancing=0, platform_profile="performance",
    ),
    Machine(
        name="xeon-6980p-2s-snc3", vendor="GenuineIntel", model="Intel(R) Xeon(R) 6980P", flags=_GNR,
        sockets=2, dies=(43, 43, 42), nodes_per_socket=3, smt=True, die_in_die_id=True, l3_per="socket",
        round_robin=False, node_mem_gib=256, distance_near=12, distance_far=21,
        bandwidth=MemBandwidth(local=204.8, remote=None, kind="theoretical",
                               source="spec-sheet peak: 4 of 12 DDR5-6400 channels per SNC3 node "
                                      "(4 x 51.2 GB/s); the same host measured 554 GB/s local / 247 GB/s "
                                      "remote per socket with SNC off (Intel MLC, seed thread)"),
        notes=(_NUMBERING, _GNR_DIES + " SNC3: one node per compute die.", _SEED_TUNING,
               _MEM + " 12 x 64 GB DDR5-6400 per socket.", _FLAGS),
        thp_enabled="always", thp_defrag="always", numa_balancing=0, platform_profile="performance",
    ),
    Machine(
        name="threadripper-pro-5975wx", vendor="AuthenticAMD",
        model="AMD Ryzen Threadripper PRO 5975WX 32-Cores", flags=_ZEN3,
        sockets=1, dies=(4,) * 8, nodes_per_socket=1, smt=True, die_in_die_id=False, l3_per="die",
        round_robin=False, node_mem_gib=256, distance_near=10, distance_far=10,
        bandwidth=MemBandwidth(local=204.8, remote=None, kind="theoretical",
                               source="spec-sheet peak: 8 channels DDR4-3200 (8 x 25.6 GB/s), AMD product page"),
        notes=(_NUMBERING, "8 CCDs x 4 cores, one 32 MB L3 per CCD (Zen 3); NPS1; die_id 0 (Zen 3 "
               "kernels report CCDs only as L3 groups).", _MEM + " 8 x 32 GB DDR4-3200.", _FLAGS),
    ),
    Machine(
        name="ryzen9-7950x", vendor="AuthenticAMD", model="AMD Ryzen 9 7950X 16-Core Processor", flags=_ZEN4,
        sockets=1, dies=(8, 8), nodes_per_socket=1, smt=True, die_in_die_id=True, l3_per="die",
        round_robin=False, node_mem_gib=64, distance_near=10, distance_far=10,
        bandwidth=MemBandwidth(local=83.2, remote=None, kind="theoretical",
                               source="spec-sheet peak: 2 channels DDR5-5200 (2 x 41.6 GB/s), AMD product page"),
        notes=(_NUMBERING, "2 CCDs x 8 cores, one 32 MB L3 per CCD (Zen 4, CCD also in die_id).",
               _MEM + " 2 x 32 GB DDR5-5200.", _FLAGS),
    ),
    Machine(
        name="epyc-9654-2s-nps1", vendor="AuthenticAMD", model="AMD EPYC 9654 96-Core Processor", flags=_ZEN4,
        sockets=2, dies=(8,) * 12, nodes_per_socket=1, smt=True, die_in_die_id=True, l3_per="die",
        round_robin=True, node_mem_gib=768, distance_near=12, distance_far=32,
        bandwidth=MemBandwidth(local=460.8, remote=None, kind="theoretical",
                               source="spec-sheet peak: 12 channels DDR5-4800 per socket (12 x 38.4 GB/s), "
                                      "AMD EPYC 9004 product page"),
        notes=(_NUMBERING, _GENOA_RR, "12 CCDs x 8 cores per socket, one 32 MB L3 per CCD; NPS1.",
               _MEM + " 12 x 64 GB DDR5-4800 per socket.", _FLAGS),
    ),
    Machine(
        name="epyc-9654-2s-nps4", vendor="AuthenticAMD", model="AMD EPYC 9654 96-Core Processor", flags=_ZEN4,
        sockets=2, dies=(8,) * 12, nodes_per_socket=4, smt=True, die_in_die_id=True, l3_per="die",
        round_robin=True, node_mem_gib=192, distance_near=12, distance_far=32,
        bandwidth=MemBandwidth(local=115.2, remote=None, kind="theoretical",
                               source="spec-sheet peak: 3 of 12 DDR5-4800 channels per NPS4 node "
                                      "(3 x 38.4 GB/s), AMD EPYC 9004 product page"),
        notes=(_NUMBERING, _GENOA_RR, "12 CCDs x 8 cores per socket, one 32 MB L3 per CCD; NPS4: 3 CCDs "
               "and 3 memory channels per node; same-socket distance 12 (real boards show 11/12).",
               _MEM + " 12 x 64 GB DDR5-4800 per socket.", _FLAGS),
    ),
]


def write(dir: Path | None = None) -> list[Path]:
    """(Re)write the synthesized profiles as JSON into ``dir`` (default: shipped dir)."""
    from .saved import SHIPPED_DIR

    d = dir or SHIPPED_DIR
    paths = []
    for m in MODELS:
        path = d / f"{m.name}.json"
        path.write_text(m.build().dumps())
        paths.append(path)
    return paths


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m hostprofiles.synth --write")
    for p in write():
        print(p)
