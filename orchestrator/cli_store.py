"""Store sub-commands: ``import``, ``export``, ``report``, ``runs``. Thin shims over plain functions."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.store import DEFAULT_STORE, Store

PEER_FORMATS = ("sweep-bench-md", "llama-bench-sqlite")


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=str(DEFAULT_STORE), metavar="PATH",
                   help=f"results store (default: {DEFAULT_STORE} under the current directory)")


def register(sub) -> None:
    p = sub.add_parser("import", help="import llama-sweep-bench / llama-bench output files into the store")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--label", help="label of the imported runs (default: each file's name)")
    p.add_argument("--host-profile", metavar="NAME", help="saved host profile (or profile JSON) the files came from")
    p.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="raise an import bound: file=64MiB, line=1MiB (bytes), rows=100000, statements=100000 "
                        "(SQL), cell=64KiB (SQL literal); repeatable")
    _store_arg(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="stored points as csv, jsonl, md, or files ik's / llama.cpp's scripts read")
    p.add_argument("--format", choices=("csv", "jsonl", "md", *PEER_FORMATS), default="csv",
                   help="sweep-bench-md: one ik sweep-bench table per series into DIR (sweep-bench-plot.py); "
                        "llama-bench-sqlite: llama-bench's SQLite table in FILE (compare-llama-bench.py)")
    p.add_argument("--run", type=int, metavar="ID", help="only this run")
    p.add_argument("-o", "--output", metavar="FILE|DIR", help="write here instead of stdout")
    _store_arg(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write report.md + report.html with plots and A/B statistics")
    p.add_argument("runs", nargs="*", type=int, metavar="RUN", help="run ids (default: all)")
    p.add_argument("--baseline", metavar="SEL", help="A: run id, run label, or setting=value[,...]")
    p.add_argument("--compare", metavar="SEL", help="B: same forms as --baseline")
    p.add_argument("--by", choices=("host", "setting"), help="only this kind of side-by-side table")
    p.add_argument("-o", "--out", "--output-dir", dest="output_dir", default=None, metavar="DIR",
                   help="report directory (default: a new one next to the store, <store>-reports/run-N)")
    _store_arg(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("runs", help="list the runs in the store")
    _store_arg(p)
    p.set_defaults(func=cmd_runs)


def cmd_import(args) -> int:
    from orchestrator.importers.ingest import plan_import
    from orchestrator.importers.limits import DEFAULT_LIMITS

    limits = DEFAULT_LIMITS.with_overrides(args.limit)
    plan = plan_import(args.files, host_profile=args.host_profile, limits=limits)  # before the store is touched
    with Store.open(args.store) as store:
        for res in plan.write(store, label=args.label):
            print(res.describe())
    return 0


def cmd_export(args) -> int:
    from orchestrator.export import export_text

    if args.format in PEER_FORMATS:
        return _export_peer(args)
    with Store.open(args.store, create=False) as store:
        text = export_text(store, args.format, args.run)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _export_peer(args) -> int:
    from orchestrator.errors import StoreError
    from orchestrator.export_peers import write_llama_bench_sqlite, write_sweep_bench_md

    if not args.output:
        what = "DIR" if args.format == "sweep-bench-md" else "FILE"
        raise StoreError(f"--format {args.format} writes files: give -o {what}")
    with Store.open(args.store, create=False) as store:
        if args.format == "sweep-bench-md":
            files, notes = write_sweep_bench_md(store, args.output, args.run)
            for note in notes:
                print(f"numasweep export: {note}", file=sys.stderr)
            print(f"wrote {len(files)} sweep-bench table(s) into {args.output}: "
                  + " ".join(f.name for f in files))
        else:
            n = write_llama_bench_sqlite(store, args.output, args.run)
            print(f"wrote {n} llama-bench test row(s) to {args.output} (tables llama_bench and test)")
    return 0


def cmd_report(args) -> int:
    from orchestrator.report import write_report

    with Store.open(args.store, create=False) as store:
        path = write_report(store, args.runs or None, args.output_dir, baseline=args.baseline,
                            compare=args.compare, by=args.by)
    print(f"report: {path.parent / 'report.md'}")
    print(f"report: {path}")
    return 0


def cmd_runs(args) -> int:
    with Store.open(args.store, create=False) as store:
        runs = store.runs()
    if not runs:
        print(f"{args.store}: no runs")
        return 0
    print(f"{'id':>4}  {'status':8} {'points':>6}  {'source':16} {'started':24} label")
    for r in runs:
        print(f"{r['id']:>4}  {r['status']:8} {r['n_points']:>6}  {r['source'][:16]:16} {r['started_at'][:24]:24} "
              f"{r['label'] or ''}")
    return 0
