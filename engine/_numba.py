"""numba options and CPU-feature dispatch, in one place.

Kernels use ``NJIT`` (serial) or ``PARALLEL`` (prange over disjoint outputs).
``SIMD`` names the int8 dot-product path chosen for this host (``engine.isa``): "avx2"
when the host has AVX2 + FMA + F16C (the intrinsics in ``_simd*``), else "scalar"
(plain numba, also the reference the SIMD path is tested against), or the one
``NUMASWEEP_SIMD`` forces. A forced path that cannot run here leaves ``SIMD`` at the
host's best and ``SIMD_ERROR`` set; ``load_model`` refuses to run with it. The choice
is recorded in every benchmark header.

ISA dispatch: every kernel has one body taking a ``kind`` argument (``AVX2`` or
``SCALAR``), a compile-time literal: bodies inlined into their entry point get it as
a constant, the others declare ``numba.literally(kind)``. The leaf primitives in
``engine.tiles`` are resolved on that literal when numba types the call (only the
chosen form is compiled, so the scalar build holds no AVX2 instruction). Each
parallel kernel has two cached entry points, one per kind, that differ only in that
literal (numba's cache cannot hold a literal chosen at call time, and a function
argument would make it uncacheable). ``isa(simd)`` picks the kind for a wrapper's
``simd`` argument.
"""
from __future__ import annotations

import os

import llvmlite.binding as _llvm
import numba

NJIT = dict(cache=True, nogil=True)
PARALLEL = dict(cache=True, nogil=True, parallel=True)
# Float kernels where reassociation is acceptable (norms, softmax sums).
FAST = dict(cache=True, nogil=True, fastmath=True)
FAST_PARALLEL = dict(cache=True, nogil=True, fastmath=True, parallel=True)


def _host_simd() -> tuple[str, str | None]:
    # (the path to compile, the NUMASWEEP_SIMD error if the forced one can't run here)
    from engine.errors import EngineError
    from engine.isa import check_env, choose, host_features

    try:
        return check_env(), None
    except EngineError as exc:
        return choose(None, host_features()), str(exc)


SIMD, SIMD_ERROR = _host_simd()
AVX2, SCALAR = 0, 1          # the literal ``kind`` of every kernel body


def isa(simd: str | None = None) -> int:
    """The kernel kind for a wrapper's ``simd`` argument (None = this host's SIMD)."""
    return AVX2 if (simd or SIMD) == "avx2" else SCALAR


CPU_NAME: str = _llvm.get_host_cpu_name()


def max_threads() -> int:
    """Threads numba may use here (its pool is sized from the affinity mask)."""
    return numba.config.NUMBA_NUM_THREADS


def set_threads(n: int) -> None:
    numba.set_num_threads(n)
