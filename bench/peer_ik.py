"""numasweep's engine vs ik_llama.cpp on the same GGUF, same machine, one run.

    .venv/bin/pip install ik-llama-cpp-python      # prebuilt ik_llama.cpp (bench-only peer)
    .venv/bin/python bench/peer_ik.py [--shape small] [--ctx 2048] [--ub 512] [-t 2] [--fa]

Runs the same sweep-bench loop (TG of ub/4 tokens at depth n_kv, remove them,
PP of one ubatch) through ik_llama.cpp's C API (ctypes, llama_decode +
llama_kv_cache_seq_rm) and through numasweep's engine, alternating the two per
configuration, and prints S_PP / S_TG per N_KV and the ratio ours/ik.
The wheel is built without AVX-512; its Python wrapper turns flash attention
off on CPUs without AVX-VNNI, so the default here is -fa off with an f16
cache (--fa asks ik for FA + q8_0 K/V anyway).
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import load_model, make_model  # noqa: E402
from engine.sweep import SweepConfig, sweep  # noqa: E402

GGML_TYPE = {"f16": 1, "q8_0": 8}


def ik_sweep(path: Path, ctx: int, ub: int, threads: int, fa: bool, ctype: str, seed: int = 42):
    """Yield (n_kv, speed_pp, speed_tg) rows from ik_llama.cpp."""
    from ik_llama_cpp import _ctypes_api as C
    from ik_llama_cpp._lib_loader import load_shared_library

    lib = load_shared_library()
    seq_rm = lib.llama_kv_cache_seq_rm
    seq_rm.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32]
    seq_rm.restype = ctypes.c_bool
    C.llama_backend_init()
    mp = C.llama_model_default_params()
    mp.n_gpu_layers = 0
    mp.use_mmap = False  # like ours: this VM's DAMON reclaim pages out cold mmap'd weights
    model = C.llama_model_load_from_file(str(path).encode(), mp)
    if not model:
        raise RuntimeError(f"ik_llama.cpp could not load {path}")
    cp = C.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = ctx, max(ub, 512), ub
    cp.n_threads = cp.n_threads_batch = threads
    cp.flash_attn = fa
    cp.type_k = cp.type_v = GGML_TYPE[ctype]
    lctx = C.llama_init_from_model(model, cp)
    if not lctx:
        raise RuntimeError("ik_llama.cpp could not create a context")
    n_vocab = C.llama_vocab_n_tokens(C.llama_model_get_vocab(model))
    batch = C.llama_batch_init(max(ub, 512), 0, 1)
    rng = np.random.default_rng(seed)

    def decode(tokens, pos0, last_only):
        n = len(tokens)
        batch.n_tokens = n
        for i, t in enumerate(tokens):
            batch.token[i] = int(t)
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1 if (not last_only or i == n - 1) else 0
        if C.llama_decode(lctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    tg = ub // 4
    decode(rng.integers(0, n_vocab, ub), 0, True)   # warm-up, like sweep-bench
    C.llama_kv_cache_clear(lctx)
    for n_kv in range(0, ctx, ub):
        t0 = time.perf_counter()
        for i in range(tg):
            decode(rng.integers(0, n_vocab, 1), n_kv + i, False)
        t_tg = time.perf_counter() - t0
        seq_rm(lctx, 0, n_kv, -1)
        toks = rng.integers(0, n_vocab, ub)
        t0 = time.perf_counter()
        decode(toks, n_kv, True)
        t_pp = time.perf_counter() - t0
        yield n_kv, ub / t_pp, tg / t_tg
    C.llama_batch_free(batch)
    C.llama_free(lctx)
    C.llama_free_model(model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="small")
    ap.add_argument("--model", default=None)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--ub", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--fa", action="store_true", help="flash attention + q8_0 K/V (else no FA, f16 cache)")
    args = ap.parse_args(argv)
    try:
        import ik_llama_cpp  # noqa: F401
    except ImportError:
        print("ik-llama-cpp-python is not installed: .venv/bin/pip install ik-llama-cpp-python", file=sys.stderr)
        return 2
    path = Path(args.model) if args.model else Path(__file__).parent / ".models" / f"{args.shape}.gguf"
    if not path.exists():
        make_model(path, args.shape, seed=0)
    ctype = "q8_0" if args.fa else "f16"
    print(f"model {path.name}; c={args.ctx} ub={args.ub} t={args.threads} fa={int(args.fa)} cache={ctype}")
    ik = list(ik_sweep(path, args.ctx, args.ub, args.threads, args.fa, ctype))
    m = load_model(path, n_ctx=args.ctx, type_k=ctype, type_v=ctype, flash_attn=args.fa,
                   n_threads=args.threads, n_threads_batch=args.threads, no_mmap=True)
    ours = list(sweep(m, SweepConfig(n_ctx=args.ctx, n_ubatch=args.ub)))
    print("|   N_KV | ik S_PP | ours S_PP | ratio | ik S_TG | ours S_TG | ratio |")
    print("|--------|---------|-----------|-------|---------|-----------|-------|")
    for (n_kv, ik_pp, ik_tg), r in zip(ik, ours):
        print(f"| {n_kv:6d} | {ik_pp:7.2f} | {r.speed_pp:9.2f} | {r.speed_pp / ik_pp:5.2f} | "
              f"{ik_tg:7.2f} | {r.speed_tg:9.2f} | {r.speed_tg / ik_tg:5.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
