"""Kernel launches per TG token and time per layer, counted on a real model.

    .venv/bin/python bench/launches.py [--shape small | --model PATH | --gemma3] [-c 1024]
        [--depth 512] [-n 32] [-t 2] [-ctk q8_0] [-ctv q8_0]

Loads the model (weights copied out of the mapping, flash attention on), fills the cache
with one ubatch to ``--depth``, then runs ``-n`` TG tokens twice: once plain (the t/s and
ms per layer printed), once under cProfile counting every call into a numba-compiled
kernel of engine/ (each call is one launch: argument unboxing, and for a parallel kernel
one wake-up of the thread pool). Prints launches per token and per layer, by kernel, with
the profiled time each took. The profiled pass is slower than the plain one; the counts
are exact.
"""
from __future__ import annotations

import argparse
import cProfile
import importlib
import pkgutil
import pstats
import sys
import time
from pathlib import Path

import numpy as np

# the repo root, not bench/ (whose engine.py would shadow the package)
sys.path[0] = str(Path(__file__).resolve().parents[1])

import engine  # noqa: E402


def model_path(args) -> Path:
    """bench/peer.py's model choice (generated or assembled under bench/.models/)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_peer", Path(__file__).with_name("peer.py"))
    peer = importlib.util.module_from_spec(spec)
    sys.modules["bench_peer"] = peer          # its dataclasses look their module up
    spec.loader.exec_module(peer)
    return peer.model_path(args)


def _args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--shape", default="small", help="synthetic shape, generated under bench/.models/")
    src.add_argument("--model", default=None, help="use this GGUF")
    src.add_argument("--gemma3", action="store_true", help="gemma3-270m Q4_K_M from its PyPI package")
    ap.add_argument("--ctx", "-c", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=512, help="KV depth the TG tokens run at")
    ap.add_argument("-n", type=int, default=32, help="TG tokens per pass")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-ctk", default="q8_0")
    ap.add_argument("-ctv", default="q8_0")
    return ap.parse_args(argv)


def _kernels() -> dict[tuple, str]:
    """(file, first line, name) of every numba dispatcher defined in engine/ -> its name."""
    from numba.core.registry import CPUDispatcher

    found = {}
    for info in pkgutil.iter_modules(engine.__path__):
        if info.name.startswith("__") or info.name.startswith("cli"):
            continue
        mod = importlib.import_module(f"engine.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, CPUDispatcher):
                code = obj.py_func.__code__
                found[(code.co_filename, code.co_firstlineno, code.co_name)] = f"{info.name}.{code.co_name}"
    return found


def main(argv=None) -> int:
    args = _args(argv)
    path = model_path(args)
    m = engine.load_model(path, n_ctx=args.ctx, type_k=args.ctk, type_v=args.ctv, flash_attn=True,
                          n_threads=args.threads, n_threads_batch=args.threads, no_mmap=True)
    n_layer = m.config.n_layer
    prompt = np.arange(args.depth, dtype=np.int32) % m.n_vocab

    def tg_pass() -> float:
        m.kv_truncate(args.depth)
        t0 = time.perf_counter()
        for i in range(args.n):
            m.eval([7], args.depth + i, all_logits=False)
        return time.perf_counter() - t0

    m.eval(prompt, 0, all_logits=False)
    tg_pass()                                      # warm-up (compiles nothing new: cached)
    plain = tg_pass()
    prof = cProfile.Profile()
    prof.enable()
    tg_pass()
    prof.disable()
    stats = pstats.Stats(prof).stats
    kernels = _kernels()
    rows = sorted(((kernels[k], v[1] / args.n, v[2] / args.n * 1e3) for k, v in stats.items() if k in kernels),
                  key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    print(f"# {Path(path).name}: {m.config.arch}, {n_layer} layers, depth {args.depth}, {args.n} TG tokens, "
          f"t={args.threads}, ctk={args.ctk} ctv={args.ctv}, simd={engine._numba.SIMD}")
    print(f"TG {args.n / plain:.2f} t/s, {plain / args.n * 1e3:.2f} ms/token, "
          f"{plain / args.n / n_layer * 1e6:.0f} us/layer (plain pass)")
    print(f"launches per token: {total:.0f} ({total / n_layer:.1f} per layer)")
    print("| kernel | per token | profiled ms/token |\n|---|---|---|")
    for name, per_tok, ms in rows:
        print(f"| {name} | {per_tok:.1f} | {ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
