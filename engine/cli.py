"""`bench` (llama-sweep-bench flags) and `make-model` sub-commands.

Registered into `numasweep` by orchestrator/cli.py, and runnable without the
orchestrator as `python -m engine bench ...` (the pinned worker's child).
Output: the header and the markdown table (md/table) or one JSON object per
row (jsonl) on stdout, flushed row by row; in jsonl mode the header goes to
stderr so stdout stays machine-readable.
"""
from __future__ import annotations

import argparse
import sys

from engine import _numba
from engine.errors import EngineError
from engine.model import load_model, stderr_log
from engine.options import K_REPACK_MODES
from engine.shapes import ALL_SHAPES, WTYPES
from engine.sweep import TABLE_HEADER, TABLE_RULE, SweepConfig, format_jsonl, main_line, sweep
from engine.synth import make_model

OUTPUT_FORMATS = ("md", "table", "jsonl")


def _flash_arg(value: str | None) -> bool:
    if value is None:
        return True
    v = value.lower()
    if v in ("1", "on", "true", "yes", "auto"):
        return True
    if v in ("0", "off", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"-fa: expected on|off, got {value!r}")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, help="GGUF model file")
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="sweep up to this KV depth (n_kv_max)")
    p.add_argument("-ub", "--ubatch-size", type=int, default=512, help="PP batch per row (default 512)")
    p.add_argument("-b", "--batch-size", type=int, default=2048, help="logical batch (recorded; >= -ub)")
    p.add_argument("-n", "--n-predict", type=int, default=0, help="TG tokens per row (default ub/4)")
    p.add_argument("-t", "--threads", type=int, default=0, help="TG threads (default: all CPUs)")
    p.add_argument("-tb", "--threads-batch", type=int, default=0, help="PP threads (default: -t)")
    p.add_argument("-ctk", "--cache-type-k", default="f16", help="K cache type: f32, f16, q8_0")
    p.add_argument("-ctv", "--cache-type-v", default="f16", help="V cache type: f32, f16, q8_0")
    p.add_argument("-fa", "--flash-attn", nargs="?", const=None, default=False, type=_flash_arg,
                   metavar="on|off", help="flash attention (bare -fa = on)")
    p.add_argument("-nrep", "--n-repetitions", type=int, default=1, help="repeat every row N times")
    p.add_argument("--sweep-stride", type=int, default=1, help="time every Nth row only")
    p.add_argument("--numa", default=None, choices=("distribute", "isolate", "numactl"),
                   help="accepted for llama.cpp compatibility; pinning is done by the orchestrator")
    p.add_argument("--output-format", default="md", help="md (alias: table) or jsonl")
    p.add_argument("--seed", type=int, default=42, help="token-id stream seed (fixed: same every run)")
    p.add_argument("--k-repack", default="auto", choices=K_REPACK_MODES,
                   help="flash attention reads a q8_0 K cache as Q8_0_R8 for PP: auto = ik's rule "
                        "(>= 8 tokens, K rows % 8 == 0), on = every PP batch, off = never (default auto)")
    p.add_argument("-rtr", "--run-time-repack", action="store_true",
                   help="repack Q8_0 weight matrices (not token_embd) to Q8_0_R8 at load (no mmap)")
    # MoE / DeepSeek-2 (engine.moe, engine.mla); accepted and recorded for every model, no effect on llama/qwen2
    p.add_argument("-fmoe", "--fused-moe", action="store_true",
                   help="fused MoE expert kernels (gate+up+SwiGLU in one pass, then down)")
    p.add_argument("-mla", "--mla-use", type=int, default=0, choices=(0, 1, 2, 3),
                   help="deepseek2 attention: 0 decompress K/V from c^KV, 1/2 absorbed (same here), "
                        "3 absorbed for TG + decompressed for PP (default 0)")
    p.add_argument("-amb", "--attention-max-batch", type=int, default=0, metavar="MiB",
                   help="cap the MLA attention scratch per head group at this many MiB (0 = no cap)")
    p.add_argument("--no-mmap", action="store_true",
                   help="copy the weights into memory at load instead of reading the file mapping")


def cmd_bench(args: argparse.Namespace) -> int:
    if args.output_format not in OUTPUT_FORMATS:
        raise EngineError(f"--output-format: unknown format {args.output_format!r} "
                          f"(allowed: {', '.join(OUTPUT_FORMATS)})")
    jsonl = args.output_format == "jsonl"
    info = stderr_log if jsonl else (lambda s: print(s, flush=True))
    cfg = SweepConfig(n_ctx=args.ctx_size, n_ubatch=args.ubatch_size, n_batch=args.batch_size,
                      n_gen=args.n_predict, nrep=args.n_repetitions, seed=args.seed,
                      stride=args.sweep_stride).validate()
    flash = True if args.flash_attn is None else bool(args.flash_attn)
    model = load_model(args.model, n_ctx=cfg.n_ctx, type_k=args.cache_type_k, type_v=args.cache_type_v,
                       flash_attn=flash, n_threads=args.threads, n_threads_batch=args.threads_batch,
                       k_repack=args.k_repack, rtr=args.run_time_repack,
                       fused_moe=args.fused_moe, mla=args.mla_use, amb=args.attention_max_batch,
                       no_mmap=args.no_mmap,
                       log=info)
    c = model.config
    info(f"model: {c.name} arch={c.arch} params={model.n_params / 1e6:.1f}M "
         f"size={model.size_bytes / 2**20:.1f} MiB type={model.weight_types()} "
         f"layers={c.n_layer} heads={c.n_head}/{c.n_head_kv} head_dim={c.head_dim} vocab={c.n_vocab} "
         f"(loaded in {model.load_seconds:.2f} s)")
    info(f"engine: n_ctx={cfg.n_ctx} ubatch={cfg.n_ubatch} tg={cfg.tg} threads={model.n_threads} "
         f"threads_batch={model.n_threads_batch} type_k={args.cache_type_k} type_v={args.cache_type_v} "
         f"flash_attn={int(flash)} k_repack={args.k_repack} rtr={int(args.run_time_repack)} "
         f"fmoe={int(args.fused_moe)} mla={args.mla_use} amb={args.attention_max_batch} "
         f"mmap={int(not (args.no_mmap or args.run_time_repack))} "
         f"simd={_numba.SIMD} cpu={_numba.CPU_NAME} "
         f"kv_cache={model.cache.nbytes / 2**20:.1f} MiB")
    info(main_line(model, cfg))
    if not jsonl:
        print("\n" + TABLE_HEADER + "\n" + TABLE_RULE, flush=True)
    for row in sweep(model, cfg):
        print(format_jsonl(model, cfg, row) if jsonl else row.table_line(), flush=True)
    return 0


def cmd_make_model(args: argparse.Namespace) -> int:
    path = make_model(args.output, args.shape, seed=args.seed, wtype=args.wtype, tied_output=args.tied,
                      dim=args.dim, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                      ffn=args.ffn, vocab=args.vocab, arch=args.arch)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def register(sub) -> None:
    b = sub.add_parser("bench", help="llama-sweep-bench on one model (this process, no pinning)")
    add_bench_arguments(b)
    b.set_defaults(func=cmd_bench)
    m = sub.add_parser("make-model", help="write a synthetic GGUF model (random weights, real format)")
    m.add_argument("--shape", default="tiny", help=f"named shape: {', '.join(ALL_SHAPES)}")
    m.add_argument("-o", "--output", required=True, help="output .gguf path")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--wtype", default="q8_0", help=f"weight type: {', '.join(WTYPES)}")
    m.add_argument("--arch", default=None,
                   help="llama (default) or qwen2; for moe-* shapes qwen2moe (default) or llama (mixtral-style)")
    m.add_argument("--tied", action="store_true", help="tie the output matrix to token_embd")
    for flag in ("dim", "layers", "heads", "kv-heads", "ffn", "vocab"):
        m.add_argument(f"--{flag}", type=int, default=None)
    m.set_defaults(func=cmd_make_model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EngineError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
