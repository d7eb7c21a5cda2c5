"""DeepSeek-2 (MLA + MoE) sweeps: the seed's settings in miniature, K-cache repack on/off (issue 7).

    .venv/bin/python bench/deepseek2.py                   # deepseek2-tiny + deepseek2-small (~1 GB), -c 4096
    .venv/bin/python bench/deepseek2.py --modes           # also -mla 0/1/3 x -fmoe on/off on the tiny shape
    .venv/bin/python bench/deepseek2.py --smoke           # tiny model, short context: checks the script

1. Generates (or reuses) the synthetic models under bench/.models/ (make_model, seed 0).
2. Runs ``python -m engine bench -m M -c CTX -ub UB -t T -ctk q8_0 -mla 3 -fa -fmoe -amb 1024 --no-mmap``
   (the seed's flags; --no-mmap because this VM's DAMON pages out cold file pages, and a MoE
   TG leaves the unselected experts cold: mmap'd TG rows then measure disk refaults) as
   separate processes, with ``--k-repack on`` and ``off`` alternated
   A B A B (``--reps`` each), and prints per N_KV: mean S_PP and S_TG of both, the on/off
   ratio, TG effective GB/s (weight bytes read per token, i.e. dense + shared + the
   expert_used_count routed experts, x S_TG) and the repack scratch of the row (MiB).
   With -mla 3 only PP batches take the decompressed path, whose materialized q8_0 K is
   what --k-repack repacks; TG (absorbed) never repacks.
3. ``--modes``: one sweep per -mla 0/1/3 x -fmoe 0/1 on deepseek2-tiny (S_PP / S_TG per N_KV).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import _numba, load_model, make_model  # noqa: E402

SEED_FLAGS = ["-ctk", "q8_0", "-mla", "3", "-fa", "-fmoe", "-amb", "1024", "--no-mmap"]


def model_path(shape: str) -> Path:
    path = ROOT / "bench" / ".models" / f"{shape}.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        make_model(path, shape, seed=0)
        print(f"generated {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def run_sweep(path: Path, ctx: int, ub: int, threads: int, flags: list[str], tg: int = 0) -> list[dict]:
    argv = [sys.executable, "-m", "engine", "bench", "-m", str(path), "-c", str(ctx), "-ub", str(ub),
            "-t", str(threads), "--output-format", "jsonl", *flags] + (["-n", str(tg)] if tg else [])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"sweep failed ({' '.join(argv[3:])}):\n{p.stderr[-2000:]}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def _mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def repack_ab(shape: str, args, raw: list) -> None:
    path = model_path(shape)
    m = load_model(path, n_ctx=args.ub, type_k="q8_0", mla=3, fused_moe=True)
    wbytes = m.weight_bytes_per_token
    c = m.config
    print(f"\n## {shape}: {m.n_params / 1e9:.3f} B params, {m.size_bytes / 2**30:.2f} GiB, "
          f"{wbytes / 1e6:.1f} MB read per TG token ({c.moe.n_expert_used} of {c.moe.n_expert} experts + "
          f"{c.moe.n_ff_shexp // max(1, c.moe.n_ff_exp)} shared), c^KV {c.kv_lora_rank}+{c.n_rot} q8_0; "
          f"flags {' '.join(SEED_FLAGS)}; -c {args.ctx} -ub {args.ub} -t {args.threads}", flush=True)
    del m
    rows: dict[str, dict[int, list[dict]]] = {"on": {}, "off": {}}
    for rep in range(args.reps):
        for mode in ("on", "off") if rep % 2 == 0 else ("off", "on"):
            t0 = time.perf_counter()
            out = run_sweep(path, args.ctx, args.ub, args.threads, SEED_FLAGS + ["--k-repack", mode], args.tg)
            print(f"  rep {rep} k-repack {mode}: {len(out)} rows in {time.perf_counter() - t0:.0f} s", flush=True)
            for r in out:
                rows[mode].setdefault(r["n_kv"], []).append(r)
                raw.append({"shape": shape, "k_repack": mode, **r})
    print("\n|   N_KV | S_PP on | S_PP off | PP on/off | S_TG on | S_TG off | TG on/off | TG GB/s | scratch MiB |")
    print("|--------|---------|----------|-----------|---------|----------|-----------|---------|-------------|")
    for n_kv in sorted(rows["on"]):
        on, off = rows["on"][n_kv], rows["off"].get(n_kv, [])
        pp_on, pp_off = _mean([r["speed_pp"] for r in on]), _mean([r["speed_pp"] for r in off])
        tg_on, tg_off = _mean([r["speed_tg"] for r in on]), _mean([r["speed_tg"] for r in off])
        scratch = max(r.get("repack_scratch_mib", 0.0) for r in on)
        print(f"| {n_kv:6d} | {pp_on:7.2f} | {pp_off:8.2f} | {pp_on / pp_off:9.3f} | {tg_on:7.2f} | "
              f"{tg_off:8.2f} | {tg_on / tg_off:9.3f} | {wbytes * tg_off / 1e9:7.2f} | {scratch:11.2f} |",
              flush=True)


def modes(args, raw: list) -> None:
    path = model_path("deepseek2-tiny")
    ctx = min(args.ctx, 2048)
    print(f"\n## deepseek2-tiny: -mla x -fmoe (-ctk q8_0 -fa -c {ctx} -ub {args.ub}); S_PP / S_TG t/s", flush=True)
    table: dict[tuple, dict[int, dict]] = {}
    for mla in (0, 1, 3):
        for fmoe in (False, True):
            flags = ["-ctk", "q8_0", "-fa", "--no-mmap", "-mla", str(mla)] + (["-fmoe"] if fmoe else [])
            out = run_sweep(path, ctx, args.ub, args.threads, flags, args.tg)
            table[(mla, fmoe)] = {r["n_kv"]: r for r in out}
            raw.extend({"shape": "deepseek2-tiny", "mla": mla, "fmoe": fmoe, **r} for r in out)
    keys = list(table)
    print("| N_KV | " + " | ".join(f"mla{k[0]} fmoe{int(k[1])}" for k in keys) + " |")
    print("|------|" + "|".join("-------------" for _ in keys) + "|")
    for n_kv in sorted(table[keys[0]]):
        cells = [f"{table[k][n_kv]['speed_pp']:6.0f}/{table[k][n_kv]['speed_tg']:5.1f}" for k in keys]
        print(f"| {n_kv:4d} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="deepseek2-tiny,deepseek2-small")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--ub", type=int, default=512)
    ap.add_argument("--tg", type=int, default=0, help="TG tokens per row (default ub/4)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2, help="A/B repetitions of each repack setting")
    ap.add_argument("--modes", action="store_true", help="also compare -mla 0/1/3 x -fmoe on the tiny shape")
    ap.add_argument("--smoke", action="store_true", help="tiny shape, -c 256 -ub 64, one repetition")
    ap.add_argument("--out", default=None, help="write every raw row here (jsonl)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.shapes, args.ctx, args.ub, args.reps, args.tg = "deepseek2-tiny", 256, 64, 1, 4
    print(f"simd={_numba.SIMD} cpu={_numba.CPU_NAME} threads={args.threads}")
    raw: list[dict] = []
    for shape in args.shapes.split(","):
        repack_ab(shape.strip(), args, raw)
    if args.modes:
        modes(args, raw)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
