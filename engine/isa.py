"""Which int8 kernel path (ISA) runs here, and ``NUMASWEEP_SIMD`` to force one; no numba.

Paths, best first: ``avx512vnni`` (named so a user can ask for it; no kernels in this
build yet), ``avx2`` (AVX2 + FMA + F16C: the intrinsics of ``engine._simd*``) and
``scalar`` (plain numba, the reference every SIMD path is tested against). The host's
features come from LLVM (what numba will compile for). ``NUMASWEEP_SIMD`` names a path
to force; an unknown name, a path the host lacks or one this build has no kernels for
is one line naming the variable (the CLI prints it and exits 2) instead of a silent
fallback: a benchmark must run the path it says it ran.
"""
from __future__ import annotations

import os

from engine.errors import EngineError

ENV = "NUMASWEEP_SIMD"
PATHS = ("scalar", "avx2", "avx512vnni")      # every name NUMASWEEP_SIMD may take
BUILT = ("scalar", "avx2")                    # paths this build has kernels for
# LLVM feature names each path needs
NEEDS = {"scalar": (), "avx2": ("avx2", "fma", "f16c"),
         "avx512vnni": ("avx512f", "avx512bw", "avx512vl", "avx512vnni")}


def host_features() -> dict[str, bool]:
    import llvmlite.binding as llvm

    return {k: bool(v) for k, v in llvm.get_host_cpu_features().items()}


def host_paths(features: dict[str, bool]) -> tuple[str, ...]:
    """The paths this host's CPU can run, best first."""
    return tuple(p for p in reversed(PATHS) if all(features.get(f) for f in NEEDS[p]))


def choose(forced: str | None, features: dict[str, bool]) -> str:
    """The path to run: the forced one if it can run here, else the best built one the host has."""
    have = host_paths(features)
    if not forced:
        return next(p for p in have if p in BUILT)
    if forced not in PATHS:
        raise EngineError(f"{ENV}={forced}: unknown kernel path (allowed: {', '.join(PATHS)})")
    if forced not in have:
        missing = [f for f in NEEDS[forced] if not features.get(f)]
        raise EngineError(f"{ENV}={forced}: this CPU lacks {', '.join(missing)} "
                          f"(it can run: {', '.join(p for p in have if p in BUILT)})")
    if forced not in BUILT:
        raise EngineError(f"{ENV}={forced}: this build has no {forced} kernels yet "
                          f"(built: {', '.join(BUILT)})")
    return forced


def check_env() -> str:
    """The path this process will run (``NUMASWEEP_SIMD`` checked); EngineError if it can't."""
    return choose(os.environ.get(ENV) or None, host_features())
