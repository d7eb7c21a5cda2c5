"""`bench` (llama-sweep-bench flags) and `make-model` sub-commands.

Registered into `numasweep` by orchestrator/cli.py, and runnable without the
orchestrator as `python -m engine bench ...` (the pinned worker's child).
Output: the header and the markdown table (md/table) or one JSON object per
row (jsonl) on stdout, flushed row by row; in jsonl mode the header goes to
stderr so stdout stays machine-readable.
"""
from __future__ import annotations

import argparse

from engine.cli_edge import add_debug_flag
from engine.cli_edge import run as run_cli
from engine.errors import EngineError
from engine.inspect import check_model_file
from engine.isa import check_env
from engine.options import (SETTINGS, UNSUPPORTED_FLAGS, OptionError, check_combination, describe, option_flag,
                            parse_flash)
from engine.shapes import ALL_SHAPES, WTYPES

# numba and the kernels load in the commands that run them, not when `numasweep` builds its
# parser: `numasweep import` or a refused spec never pays for them.

OUTPUT_FORMATS = ("md", "table", "jsonl")


def _flash_arg(value: str | None) -> bool:
    try:
        return parse_flash(value)
    except OptionError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


class _Unsupported(argparse.Action):
    """An ik / llama.cpp flag this engine does not implement: one line, exit 2."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: not supported by the numasweep engine (CPU only, no tensor "
                     f"overrides; see `bench --help` for what it takes)")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """``bench``'s flags: the model, then one per setting of engine.options.SETTINGS."""
    p.add_argument("-m", "--model", required=True, help="GGUF model file")
    for s in SETTINGS:
        text = s.help.replace("%", "%%") + f" (default: {s.default})"
        if s.name == "flash_attn":
            p.add_argument(*s.flags, dest=s.name, nargs="?", const=True, default=s.default, type=_flash_arg,
                           metavar="on|off", help=text)
        elif s.kind is bool:
            p.add_argument(*s.flags, dest=s.name, action="store_true", default=s.default, help=text)
        else:
            # values are checked by the schema (one line naming the flag), not argparse's choices
            metavar = "|".join(map(str, s.choices)) if s.choices else "N" if s.kind is int else "X"
            p.add_argument(*s.flags, dest=s.name, type=s.kind, default=s.default, metavar=metavar, help=text)
    p.add_argument("--numa", default=None, choices=("distribute", "isolate", "numactl"),
                   help="accepted for llama.cpp compatibility; pinning is done by the orchestrator")
    p.add_argument("--output-format", default="md", help="md (alias: table) or jsonl")
    for flag, takes_value in UNSUPPORTED_FLAGS.items():
        p.add_argument(flag, action=_Unsupported, nargs=1 if takes_value else 0, help=argparse.SUPPRESS)


def bench_settings(args: argparse.Namespace) -> dict:
    """The schema's settings as given on the command line, each checked, then the rules between them."""
    values = {s.name: getattr(args, s.name) for s in SETTINGS}
    try:
        for s in SETTINGS:
            s.check(values[s.name])
        check_combination(values)
    except OptionError as exc:
        raise EngineError(f"{option_flag(exc.setting)}: {exc.message}") from None
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    if args.output_format not in OUTPUT_FORMATS:
        raise EngineError(f"--output-format: unknown format {args.output_format!r} "
                          f"(allowed: {', '.join(OUTPUT_FORMATS)})")
    v = bench_settings(args)
    check_env()                   # NUMASWEEP_SIMD names a path this host and build can run
    check_model_file(args.model)  # a bad file is refused before numba and the kernels load

    from engine import _numba
    from engine.bench_watch import BenchWatch
    from engine.model import load_model, stderr_log
    from engine.sweep import TABLE_HEADER, TABLE_RULE, SweepConfig, format_jsonl, main_line, sweep

    jsonl = args.output_format == "jsonl"
    info = stderr_log if jsonl else (lambda s: print(s, flush=True))
    cfg = SweepConfig.from_settings(v)
    model = load_model(args.model, n_ctx=v["c"], type_k=v["type_k"], type_v=v["type_v"],
                       flash_attn=v["flash_attn"], n_threads=v["threads"], n_threads_batch=v["threads_batch"],
                       k_repack=v["k_repack"], rtr=v["rtr"], fused_moe=v["fmoe"], mla=v["mla"], amb=v["amb"],
                       no_mmap=v["no_mmap"], log=info)
    c = model.config
    info(f"model: {c.name} arch={c.arch} params={model.n_params / 1e6:.1f}M "
         f"size={model.size_bytes / 2**20:.1f} MiB type={model.weight_types()} "
         f"layers={c.n_layer} heads={c.n_head}/{c.n_head_kv} head_dim={c.head_dim} vocab={c.n_vocab} "
         f"(loaded in {model.load_seconds:.2f} s)")
    effective = {**v, "tg": cfg.tg, "threads": model.n_threads, "threads_batch": model.n_threads_batch}
    info(f"engine: {describe(effective)} mmap={int(not (v['no_mmap'] or v['rtr']))} "
         f"simd={_numba.SIMD} cpu={_numba.CPU_NAME} kv_cache={model.cache.nbytes / 2**20:.1f} MiB")
    info(main_line(model, cfg))
    if not jsonl:
        print("\n" + TABLE_HEADER + "\n" + TABLE_RULE, flush=True)
    for row, noise in BenchWatch(cfg).rows(sweep(model, cfg)):  # progress + noise warnings on stderr
        print(format_jsonl(model, cfg, row, noise) if jsonl else row.table_line(), flush=True)
    return 0


def cmd_make_model(args: argparse.Namespace) -> int:
    from engine.synth import make_model

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
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    return run_cli(parser.prog, parser, argv, (EngineError,))
