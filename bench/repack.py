"""K-cache repack and -rtr on/off, measured honestly in one run (issue 3).

    .venv/bin/python bench/repack.py                      # small model, -c 8192 (long on 2 cores)
    .venv/bin/python bench/repack.py --ctx 2048           # shorter sweep
    .venv/bin/python bench/repack.py --smoke              # tiny model, a minute: checks the script

1. Kernels (in this process): Q8_0_R8 x Q8_0 vs Q8_0 x Q8_0 GEMM (PP, 512 tokens) and
   GEMV (TG) GOP/s on the small model's matrix shapes, and flash attention of one
   512-token ubatch over a q8_0 cache with --k-repack on vs off at a few depths.
2. Sweeps: ``python -m engine bench -c CTX -ub UB -t T -fa -ctk q8_0 -ctv q8_0`` as
   separate processes (peak RSS is per process), alternated A B A B (``--reps`` each):
   --k-repack on vs off (rtr off), then -rtr on vs off (k-repack auto), weights in owned
   memory on both sides (--no-mmap unless --mmap). Per N_KV it
   prints mean S_PP and S_TG for both, the on/off ratio, the spread over repetitions,
   peak RSS and the repack scratch (this row / high-water mark) in MiB.
Run it on a quiet machine: nothing else may share the cores. Raw rows: --out FILE.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import _numba, make_model  # noqa: E402
from engine.attention import attention  # noqa: E402
from engine.kvcache import KVCache  # noqa: E402
from engine.matmul import gemm_q8_0  # noqa: E402
from engine.q8_0_r8 import RepackScratch, gemm_q8_0_r8, pack_q8_0_r8  # noqa: E402
from engine.quant import quantize_q8_0  # noqa: E402
from engine.shapes import resolve_shape  # noqa: E402


def _best(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_kernels(shape: str, threads: int, ub: int, depths: list[int]) -> None:
    s = resolve_shape(shape)
    hd = s.hd
    rng = np.random.default_rng(0)
    numba.set_num_threads(threads)
    print(f"## kernels ({shape}: dim {s.dim}, ffn {s.ffn}, heads {s.heads}/{s.kv_heads}, head_dim {hd}; "
          f"{threads} threads, simd={_numba.SIMD})\n")
    print("| kernel | shape | Q8_0 GOP/s | Q8_0_R8 GOP/s | R8/Q8_0 |")
    print("|---|---|---:|---:|---:|")
    for n_out, n_in in ((s.dim, s.dim), (s.ffn, s.dim), (s.dim, s.ffn)):
        w = quantize_q8_0((rng.standard_normal((n_out, n_in)) * 0.02).astype(np.float32))
        p = pack_q8_0_r8(w)
        for n_tok, reps in ((ub, 3), (1, 30)):
            x = quantize_q8_0(rng.standard_normal((n_tok, n_in)).astype(np.float32))
            out = np.empty((n_tok, n_out), dtype=np.float32)
            t_q = _best(lambda: gemm_q8_0(w, x, out), reps)
            t_r = _best(lambda: gemm_q8_0_r8(p, x, out), reps)
            ops = 2.0 * n_out * n_in * n_tok
            kind = "GEMM (PP)" if n_tok > 1 else "GEMV (TG)"
            print(f"| {kind} | {n_out}x{n_in} x {n_tok} tok | {ops / t_q / 1e9:.1f} | {ops / t_r / 1e9:.1f} "
                  f"| {t_q / t_r:.2f} |")
    print(f"\n| flash attention, {ub} queries, q8_0 K/V | N_KV after | off ms | on ms | on/off speed |")
    print("|---|---:|---:|---:|---:|")
    n_max = max(depths) + ub
    cache = KVCache(1, n_max, s.kv_heads, hd, hd, "q8_0", "q8_0")
    kv = rng.standard_normal((n_max, s.kv_heads * hd)).astype(np.float32)
    cache.store(0, 0, kv, kv[::-1].copy())
    cache.commit(0, n_max)
    q = rng.standard_normal((ub, s.heads, hd)).astype(np.float32)
    scratch = RepackScratch()
    for d in depths:
        t = {}
        for mode in ("off", "on", "off", "on"):   # alternate, keep the best of each
            tm = _best(lambda: attention(q, cache, 0, d, flash=True, k_repack=mode, scratch=scratch), 2)
            t[mode] = min(t.get(mode, float("inf")), tm)
        print(f"| one layer | {d + ub} | {t['off'] * 1e3:.1f} | {t['on'] * 1e3:.1f} | {t['off'] / t['on']:.2f} |")
    print()


def run_sweep(model: Path, ctx: int, ub: int, threads: int, extra: list[str], tg: int) -> tuple[list[dict], str]:
    argv = [sys.executable, "-m", "engine", "bench", "-m", str(model), "-c", str(ctx), "-ub", str(ub),
            "-t", str(threads), "-tb", str(threads), "-fa", "-ctk", "q8_0", "-ctv", "q8_0",
            "--output-format", "jsonl"] + (["-n", str(tg)] if tg else []) + extra
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"bench failed ({' '.join(argv)}):\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return rows, proc.stderr


def _fmt_spread(v: list[float]) -> str:
    m = float(np.mean(v))
    return f"{m:8.2f}" + (f" ±{(max(v) - min(v)) / 2:5.2f}" if len(v) > 1 else "")


def compare(label_a: str, runs_a: list[list[dict]], label_b: str, runs_b: list[list[dict]]) -> None:
    by = {}
    for which, runs in (("a", runs_a), ("b", runs_b)):
        for rows in runs:
            for r in rows:
                by.setdefault(r["n_kv"], {"a": [], "b": []})[which].append(r)
    print(f"|  N_KV | S_PP {label_a} | S_PP {label_b} | PP ratio | S_TG {label_a} | S_TG {label_b} | TG ratio "
          f"| RSS {label_a} | RSS {label_b} | scratch {label_a} row/hwm | scratch {label_b} row/hwm |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n_kv in sorted(by):
        a, b = by[n_kv]["a"], by[n_kv]["b"]
        if not a or not b:
            continue
        pa, pb = [r["speed_pp"] for r in a], [r["speed_pp"] for r in b]
        ta, tb = [r["speed_tg"] for r in a], [r["speed_tg"] for r in b]

        def scr(rs):
            return f"{max(r['repack_scratch_mib'] for r in rs):.1f}/{max(r.get('repack_scratch_hwm_mib', 0.0) for r in rs):.1f}"

        print(f"| {n_kv:5d} | {_fmt_spread(pa)} | {_fmt_spread(pb)} | {np.mean(pa) / np.mean(pb):5.2f} "
              f"| {_fmt_spread(ta)} | {_fmt_spread(tb)} | {np.mean(ta) / np.mean(tb):5.2f} "
              f"| {max(r['rss_hwm_mib'] for r in a):7.0f} | {max(r['rss_hwm_mib'] for r in b):7.0f} "
              f"| {scr(a)} | {scr(b)} |")
    print()


def ab(name: str, model: Path, args, extra_a: list[str], extra_b: list[str], raw: list) -> None:
    print(f"## {name}: A = {' '.join(extra_a)}, B = {' '.join(extra_b)} "
          f"(-c {args.ctx} -ub {args.ub} -t {args.threads} -fa -ctk q8_0 -ctv q8_0; A B A B, {args.reps} each)\n")
    runs = {"a": [], "b": []}
    for rep in range(args.reps):
        for which, extra in (("a", extra_a), ("b", extra_b)):
            t0 = time.perf_counter()
            rows, err = run_sweep(model, args.ctx, args.ub, args.threads, extra, args.tg)
            runs[which].append(rows)
            for line in err.splitlines():
                if line.startswith("run-time repack"):
                    print(f"    {' '.join(extra)}: {line}")
            print(f"    run {rep + 1} {' '.join(extra)}: {len(rows)} rows in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
            raw.extend({**r, "bench": name, "setting": " ".join(extra), "run": rep} for r in rows)
    print()
    compare("A", runs["a"], "B", runs["b"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="small")
    ap.add_argument("--model", default=None, help="use this GGUF instead of generating one")
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--ub", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", "--tg", type=int, default=0, help="TG tokens per row (default ub/4)")
    ap.add_argument("--reps", type=int, default=2, help="runs per setting, alternated A B A B")
    ap.add_argument("--what", default="kernels,krepack,rtr", help="comma list of kernels, krepack, rtr")
    ap.add_argument("--smoke", action="store_true", help="tiny model, -c 512 -ub 128, 1 rep: checks the script")
    ap.add_argument("--mmap", action="store_true", help="leave the non-rtr runs mmap-backed (default: --no-mmap)")
    ap.add_argument("--out", default=None, help="write every measured row here (jsonl)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.shape, args.ctx, args.ub, args.reps = "tiny", 512, 128, 1
    what = set(args.what.split(","))
    path = Path(args.model) if args.model else Path(__file__).parent / ".models" / f"{args.shape}.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        make_model(path, args.shape, seed=0)
        print(f"generated {path} in {time.perf_counter() - t0:.1f} s")
    print(f"# repack bench: {path.name}, simd={_numba.SIMD} cpu={_numba.CPU_NAME}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}\n")
    if "kernels" in what:
        depths = sorted({0, args.ub, 4 * args.ub, max(0, args.ctx - args.ub)} & set(range(0, args.ctx, args.ub)))
        bench_kernels(args.shape, args.threads, args.ub, depths)
    raw: list[dict] = []
    # Weights in owned memory on both sides: this VM's DAMON pageout evicts idle mmap'd
    # pages, so mmap'd TG rows measured disk refaults (and -rtr never maps the file).
    nm = [] if args.mmap else ["--no-mmap"]
    if "krepack" in what:
        ab("--k-repack", path, args, ["--k-repack", "on"] + nm, ["--k-repack", "off"] + nm, raw)
    if "rtr" in what:
        ab("-rtr", path, args, ["-rtr", "--k-repack", "auto"], ["--k-repack", "auto"] + nm, raw)
    if args.out:
        with open(args.out, "w") as fh:
            for r in raw:
                fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
