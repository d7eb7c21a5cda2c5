"""CPU affinity + memory policy for a child process, and verification from /proc.

numba sizes its thread pool from the affinity mask when it is first imported and
``sched_setaffinity(0, ...)`` affects only the calling thread, so pinning must
happen before the engine's interpreter imports anything. Hence a launcher:

    python -m orchestrator.pin --cpus 0,1 --mem bind:0 --threads 2 -- argv...

sets affinity and ``set_mempolicy`` on its own (single-threaded) process and then
``execv``s the argv; both survive exec, so it works for the builtin engine and for
external binaries alike. ``verify(pid)`` reads back what every thread really got.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from hostprofiles.cpulist import format_cpulist, parse_cpulist  # noqa: F401 (re-exported)
from hostprofiles.errors import ProfileError

SYS_SET_MEMPOLICY = 238  # x86_64
PR_SET_PDEATHSIG = 1
MPOL = {"none": 0, "preferred": 1, "bind": 2, "interleave": 3}  # MPOL_DEFAULT, ...
_NUMA_MAPS_MODE = {"preferred": "prefer", "bind": "bind", "interleave": "interleave"}
_MAX_NODES = 1024


class PinError(RuntimeError):
    """Pinning could not be applied, or what the child got differs from what was asked."""


def set_mempolicy(mode: str, nodes: tuple[int, ...]) -> None:
    """set_mempolicy(2) for the calling thread (inherited by exec and children)."""
    if mode not in MPOL:
        raise PinError(f"memory policy {mode!r} (allowed: {', '.join(MPOL)})")
    bits = ctypes.c_ulong * (_MAX_NODES // (8 * ctypes.sizeof(ctypes.c_ulong)))
    mask = bits()
    width = 8 * ctypes.sizeof(ctypes.c_ulong)
    for n in nodes:
        mask[n // width] |= 1 << (n % width)
    libc = ctypes.CDLL(None, use_errno=True)
    if mode == "none":
        rc = libc.syscall(SYS_SET_MEMPOLICY, 0, None, ctypes.c_ulong(0))
    else:
        rc = libc.syscall(SYS_SET_MEMPOLICY, MPOL[mode], mask, ctypes.c_ulong(_MAX_NODES + 1))
    if rc != 0:
        err = ctypes.get_errno()
        raise PinError(f"set_mempolicy({mode}, nodes {format_cpulist(nodes)}) failed: {os.strerror(err)}")


def pin_env(threads: int) -> dict[str, str]:
    """Thread-pool settings for the child: numba ignores OMP_NUM_THREADS (Ray sets it)."""
    return {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores", "NUMBA_NUM_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads)}


def launcher_argv(cpus, mem_policy: str, mem_nodes, threads: int, argv: list[str]) -> list[str]:
    """The argv that runs ``argv`` pinned (via this module's launcher)."""
    mem = mem_policy if mem_policy == "none" else f"{mem_policy}:{format_cpulist(mem_nodes)}"
    return [sys.executable, "-m", "orchestrator.pin", "--cpus", format_cpulist(cpus), "--mem", mem,
            "--threads", str(threads), "--", *argv]


# -- verification --------------------------------------------------------------
@dataclass(frozen=True)
class Verified:
    cpus: tuple[int, ...]        # union of every thread's Cpus_allowed_list
    mems_allowed: tuple[int, ...]
    mem_policy: str              # from numa_maps: 'bind:0', 'interleave:0-1', 'default'; 'unknown'
                                 # once the process has exited (a zombie has no memory map)
    thread_cpus: tuple[tuple[int, tuple[int, ...]], ...]
    pages_per_node: tuple[tuple[int, int], ...]  # (node, pages) summed over numa_maps

    @property
    def threads(self) -> int:
        return len(self.thread_cpus)

    @property
    def mems(self) -> str:
        """What the point records: the policy's nodes, or the allowed nodes under 'default'."""
        return self.mem_policy if self.mem_policy != "default" else f"default:{format_cpulist(self.mems_allowed)}"


def _status_field(text: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*(\S*)", text, re.M)
    return m.group(1) if m else ""


def verify(pid: int, proc: str = "/proc") -> Verified:
    """Read every thread's affinity and the process's memory policy back from /proc."""
    base = Path(proc) / str(pid)
    thread_cpus: dict[int, tuple[int, ...]] = {}
    mems = ""
    for status in (base / "task").glob("*/status"):
        try:
            text = status.read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just exited
        thread_cpus[int(status.parent.name)] = parse_cpulist(_status_field(text, "Cpus_allowed_list"))
        mems = _status_field(text, "Mems_allowed_list") or mems
    if pid not in thread_cpus:
        raise PinError(f"process {pid} is gone: nothing to verify")
    policies: dict[str, int] = {}
    pages: dict[int, int] = {}
    try:
        maps = (base / "numa_maps").read_text()
    except OSError:
        maps = ""
    for line in maps.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        policies[parts[1]] = policies.get(parts[1], 0) + 1
        for p in parts[2:]:
            m = re.fullmatch(r"N(\d+)=(\d+)", p)
            if m:
                pages[int(m.group(1))] = pages.get(int(m.group(1)), 0) + int(m.group(2))
    # The task policy shows on every mapping without its own (mbind) policy: the most common one.
    policy = max(policies, key=policies.get) if policies else "unknown"
    return Verified(
        cpus=tuple(sorted({c for cs in thread_cpus.values() for c in cs})),
        mems_allowed=parse_cpulist(mems or "0"),
        mem_policy=policy,
        thread_cpus=tuple(sorted(thread_cpus.items())),
        pages_per_node=tuple(sorted(pages.items())),
    )


def expected_policy(mem_policy: str, mem_nodes) -> str:
    """numa_maps' spelling of a policy: 'bind:0-1', 'interleave:0-1', 'prefer:0', 'default'."""
    if mem_policy == "none":
        return "default"
    return f"{_NUMA_MAPS_MODE[mem_policy]}:{format_cpulist(mem_nodes)}"


def check(v: Verified, cpus, mem_policy: str, mem_nodes) -> None:
    """Raise PinError unless every thread stays on the slot's CPUs and the memory policy is the asked one."""
    want = tuple(sorted(set(cpus)))
    # OMP_PROC_BIND=close binds each OpenMP thread (the main one too) to one core of the
    # mask, so a thread may hold a subset of the slot's CPUs, never a CPU outside it.
    for tid, cpus_t in v.thread_cpus:
        if not cpus_t or not set(cpus_t) <= set(want):
            raise PinError(f"affinity mismatch: asked CPUs {format_cpulist(want)}, thread {tid} "
                           f"may run on {format_cpulist(cpus_t) or 'none'}")
    pol = expected_policy(mem_policy, mem_nodes)
    if v.mem_policy != "unknown" and v.mem_policy != pol:
        raise PinError(f"memory policy mismatch: asked {pol}, child has {v.mem_policy}")


# -- launcher ----------------------------------------------------------------
def _parse_cpus(text: str) -> tuple[int, ...]:
    try:
        cpus = parse_cpulist(text)
    except ProfileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not cpus:
        raise argparse.ArgumentTypeError("--cpus is empty")
    return cpus


def _parse_mem(text: str) -> tuple[str, tuple[int, ...]]:
    mode, _, nodes = text.partition(":")
    if mode not in MPOL or (mode != "none" and not nodes):
        raise argparse.ArgumentTypeError(f"--mem {text!r}: want none or MODE:NODES, MODE one of bind, "
                                         "interleave, preferred")
    return mode, _parse_cpus(nodes) if nodes else ()


PROG = "python -m orchestrator.pin"


def main(argv: list[str] | None = None) -> int:
    """The launcher behind the common error edge (engine.cli_edge: 2 bad input, 3 internal error),
    written out here so that the launcher never imports the engine (numba) before it execs."""
    try:
        return _launch(argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback in a file
        from engine.cli_edge import DEBUG_ENV, internal_error

        debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
        return internal_error(PROG, exc, debug)


def _launch(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Pin CPU affinity + memory policy, then exec a command.")
    p.add_argument("--cpus", required=True, type=_parse_cpus)
    p.add_argument("--mem", default="none", type=_parse_mem)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command after --")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads {args.threads}: must be >= 1")
    try:
        os.sched_setaffinity(0, args.cpus)
    except OSError as exc:
        print(f"{PROG}: error: --cpus {format_cpulist(args.cpus)}: cannot run there "
              f"(sched_setaffinity: {exc.strerror})", file=sys.stderr)
        return 2
    try:
        set_mempolicy(*args.mem)
    except (OSError, PinError) as exc:
        print(f"{PROG}: error: --mem {args.mem[0]}: {exc}", file=sys.stderr)
        return 2
    # Die with the worker that started us (kill -9 of a worker must not leave an engine
    # running on the slot's CPUs while its restart measures there). Survives exec.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    env = dict(os.environ, **pin_env(args.threads or len(args.cpus)))
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as exc:  # bad input like any other: the command named cannot be run
        print(f"{PROG}: error: {cmd[0]}: cannot run: {exc.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
