"""``numasweep bundle`` (one shareable file per run) and ``check`` (regression gate): thin shims."""
from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.store import DEFAULT_STORE, Store


def register(sub) -> None:
    p = sub.add_parser("bundle", help="write one run as a single shareable file (import it anywhere)")
    p.add_argument("run", type=int, metavar="RUN")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="bundle file, gzip when it ends in .gz (default: <store stem>-run-RUN.numasweep.json.gz "
                        "in the current directory); never overwritten")
    p.add_argument("--no-model-hash", action="store_true",
                   help="do not sha256 the run's model files (they can be hundreds of GB)")
    p.add_argument("--store", default=str(DEFAULT_STORE), metavar="PATH",
                   help=f"results store (default: {DEFAULT_STORE})")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("check", help="regression gate: exit 1 when RUN is significantly slower than the baseline")
    p.add_argument("--baseline", required=True, metavar="RUN_OR_BUNDLE",
                   help="baseline: a run id of --store, or a bundle file (numasweep bundle)")
    p.add_argument("--run", required=True, metavar="RUN", help="the run to judge: a run id of --store, or a bundle")
    p.add_argument("--max-drop", type=float, default=5.0, metavar="PCT",
                   help="a slowdown of more than PCT percent is a regression (default 5)")
    p.add_argument("--alpha", type=float, default=0.05, metavar="P",
                   help="significance level of the one-sided Welch test over repetitions (default 0.05)")
    p.add_argument("--format", choices=("text", "json", "junit"), default="text")
    p.add_argument("--allow-host-mismatch", action="store_true",
                   help="compare points measured on hosts with different profile fingerprints")
    p.add_argument("-o", "--output", metavar="FILE", help="write the verdict to FILE instead of stdout (a one-line summary goes to stderr)")
    p.add_argument("--store", default=str(DEFAULT_STORE), metavar="PATH",
                   help=f"results store holding the run ids (default: {DEFAULT_STORE})")
    p.set_defaults(func=cmd_check)


def _side(value: str, store_path: str, what: str):
    from orchestrator.check import CheckError, side_from_store

    text = str(value).strip()
    if text.isdigit():
        if not Path(store_path).is_file():
            raise CheckError(f"{what} {text}: --store {store_path}: no results store here")
        with Store.open(store_path, create=False) as store:
            return side_from_store(store, int(text))
    if Path(text).is_file():
        from orchestrator.bundle import side_from_bundle

        return side_from_bundle(text)
    raise CheckError(f"{what} {text!r}: neither a run id of --store {store_path} nor a bundle file")


def cmd_check(args) -> int:
    from orchestrator.check import RENDERERS, check

    baseline = _side(args.baseline, args.store, "--baseline")
    run = _side(args.run, args.store, "--run")
    result = check(baseline, run, max_drop=args.max_drop / 100.0, alpha=args.alpha,
                   allow_host_mismatch=args.allow_host_mismatch)
    text = RENDERERS[args.format](result)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"numasweep check: {'FAIL' if result.exit_code else 'PASS'} ({len(result.regressions)} regression(s)); "
              f"{args.format} verdict in {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return result.exit_code


def cmd_bundle(args) -> int:
    from orchestrator.bundle import write_bundle

    out = args.output or f"{Path(args.store).stem}-run-{args.run}.numasweep.json.gz"
    with Store.open(args.store, create=False) as store:
        path = write_bundle(store, args.run, out, hash_models=not args.no_model_hash)
    print(f"bundle: {path} ({path.stat().st_size / 1024:.1f} KiB); import it with: numasweep import {path.name}")
    return 0
