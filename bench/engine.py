"""Engine speed vs the memory-bandwidth limit, measured in one run.

    .venv/bin/python bench/engine.py [--shape small] [--ctx 4096] [--ub 512] [-t 2]

1. Generates (or reuses) the synthetic model under bench/.models/.
2. Measures memory read bandwidth with the same thread count as TG: a numba
   prange sum over a 1 GiB array (the best plain read rate numba gets here),
   and numpy's single-threaded sum for reference.
3. Runs the sweep (-fa -ctk q8_0 -ctv q8_0) and prints, per N_KV, S_PP, S_TG,
   TG effective GB/s (weight bytes read per token x S_TG) and its ratio to the
   measured bandwidth, and PP GOP/s (2 x matmul weights x S_PP).
Run it on a quiet machine: nothing else may share the cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import _numba, load_model, make_model  # noqa: E402
from engine.sweep import TABLE_HEADER, TABLE_RULE, SweepConfig, sweep  # noqa: E402


@njit(parallel=True)  # not cached: peer.py loads this file as another module name, which the cache index records
def _read_sum(a):
    # a: (n,) u64; 64 disjoint chunks so every thread streams its own range
    n = a.shape[0] // 64
    part = np.zeros(64, dtype=np.uint64)
    for c in prange(64):
        s = np.uint64(0)
        for i in range(c * n, (c + 1) * n):
            s += a[i]
        part[c] = s
    return part.sum()


def read_bandwidth(threads: int, gib: float = 1.0, reps: int = 5) -> tuple[float, float]:
    """(numba prange GB/s with `threads`, numpy single-thread GB/s) over a `gib` GiB array."""
    a = np.ones(int(gib * 2**30) // 8, dtype=np.uint64)
    numba.set_num_threads(threads)
    _read_sum(a)
    best = min(_t(lambda: _read_sum(a)) for _ in range(reps))
    f = a.view(np.float64)
    f.sum()
    best_np = min(_t(f.sum) for _ in range(3))
    return a.nbytes / best / 1e9, a.nbytes / best_np / 1e9


def _t(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="small")
    ap.add_argument("--model", default=None, help="use this GGUF instead of generating one")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--ub", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-tb", "--threads-batch", type=int, default=0)
    ap.add_argument("-ctk", default="q8_0")
    ap.add_argument("-ctv", default="q8_0")
    ap.add_argument("--mmap", action="store_true",
                    help="keep weights mmap'd (default: copied, like the seed's --no-mmap: this VM's "
                         "DAMON reclaim pages out cold file pages, so mmap'd TG rows measure disk refaults)")
    args = ap.parse_args(argv)
    path = Path(args.model) if args.model else Path(__file__).parent / ".models" / f"{args.shape}.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        make_model(path, args.shape, seed=0)
        print(f"generated {path} in {time.perf_counter() - t0:.1f} s")
    model = load_model(path, n_ctx=args.ctx, type_k=args.ctk, type_v=args.ctv, flash_attn=True,
                       n_threads=args.threads, n_threads_batch=args.threads_batch or args.threads,
                       no_mmap=not args.mmap)
    wbytes = model.weight_bytes_per_token
    matmul_params = model.weights.output.n_params + sum(
        w.n_params for L in model.weights.layers for w in L.attn.matrices() + L.ffn.matrices())
    print(f"model {path.name}: {model.n_params / 1e9:.3f} B params, {wbytes / 1e9:.3f} GB of weights per "
          f"token; simd={_numba.SIMD} cpu={_numba.CPU_NAME}; threads {model.n_threads}/{model.n_threads_batch}")
    bw, bw_np = read_bandwidth(model.n_threads)
    print(f"memory read bandwidth: {bw:.1f} GB/s (numba prange, {model.n_threads} threads), "
          f"{bw_np:.1f} GB/s (numpy sum, 1 thread)")
    cfg = SweepConfig(n_ctx=args.ctx, n_ubatch=args.ub)
    print("\n" + TABLE_HEADER + " TG GB/s | TG/bw | PP GOP/s |")
    print(TABLE_RULE + "---------|-------|----------|")
    for row in sweep(model, cfg):
        tg_gbs = wbytes * row.speed_tg / 1e9
        pp_gops = 2 * matmul_params * row.speed_pp / 1e9
        print(row.table_line() + f" {tg_gbs:7.2f} | {tg_gbs / bw:5.2f} | {pp_gops:8.1f} |", flush=True)
    # re-measure so a bandwidth drift during the sweep shows
    bw2, _ = read_bandwidth(model.n_threads, reps=3)
    print(f"\nmemory read bandwidth after the sweep: {bw2:.1f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
