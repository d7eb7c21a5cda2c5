"""Replay backend: a child that re-emits sweep rows, recorded or synthetic, as JSONL.

It exercises everything around the engine (pinning, verification, streaming,
faults, the store) at a chosen pace without the engine's cost. With a recorded
file (engine JSONL or a sweep-bench log) each N_KV of the job takes the timings
of the recorded row at that depth (cycling when the file has fewer); without
one, timings are synthetic and deterministic.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from orchestrator.backends.jsonl import jsonl_rows
from orchestrator.jobs import Job


class ReplayBackend:
    name = "replay"
    merge_stderr = False

    def argv(self, job: Job) -> list[str]:
        s = job.settings
        argv = [sys.executable, "-m", "orchestrator.backends.replay", "-c", str(s.n_ctx), "-ub", str(s.ubatch),
                "-n", str(s.tg), "-t", str(job.threads), "-tb", str(job.threads_batch), "-nrep",
                str(job.repetitions), "-ctk", s.type_k, "-ctv", s.type_v, "--k-repack", s.k_repack,
                "--delay", str(job.backend.delay_s)]
        if job.backend.replay:
            argv += ["--file", job.backend.replay]
        return argv

    def row_parser(self):
        return jsonl_rows


def recorded(path: str) -> list[dict]:
    from orchestrator.importers.sweep_bench import parse_sweep_bench_text

    return list(parse_sweep_bench_text(Path(path).read_text(), name=path).rows)


def rows(c: int, ub: int, tg: int, nrep: int, threads: int, threads_batch: int, type_k: str, type_v: str,
         k_repack: str, source: list[dict] | None = None):
    by_kv = {r["n_kv"]: r for r in source or ()}
    for i, n_kv in enumerate(range(0, c, ub)):
        for rep in range(nrep):
            if source:
                rec = by_kv.get(n_kv) or source[i % len(source)]
                t_pp = rec["t_pp"] * ub / rec["pp"]
                t_tg = rec["t_tg"] * tg / rec["tg"]
            else:  # a plausible shape: both phases slow down with depth
                t_pp = ub / 400.0 * (1 + n_kv / 4096)
                t_tg = tg / 40.0 * (1 + n_kv / 16384)
            yield {"n_kv_max": c, "n_batch": ub, "n_ubatch": ub, "flash_attn": True, "n_gpu_layers": 0,
                   "n_threads": threads, "n_threads_batch": threads_batch, "pp": ub, "tg": tg, "n_kv": n_kv,
                   "t_pp": round(t_pp, 6), "speed_pp": round(ub / t_pp, 3), "t_tg": round(t_tg, 6),
                   "speed_tg": round(tg / t_tg, 3), "rss_hwm_mib": 64.0, "k_repack": k_repack,
                   "type_k": type_k, "type_v": type_v, "repack_scratch_mib": 0.0, "rep": rep}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.backends.replay")
    for flag, default in (("-c", 1024), ("-ub", 256), ("-n", 64), ("-t", 1), ("-tb", 1), ("-nrep", 1)):
        p.add_argument(flag, type=int, default=default)
    for flag, default in (("-ctk", "f16"), ("-ctv", "f16"), ("--k-repack", "auto")):
        p.add_argument(flag, default=default)
    p.add_argument("--delay", type=float, default=0.0, help="seconds before each row")
    p.add_argument("--file", default=None)
    a = p.parse_args(argv)
    source = recorded(a.file) if a.file else None
    print(f"replay: c={a.c} ub={a.ub} tg={a.n} rows={len(range(0, a.c, a.ub)) * a.nrep}", file=sys.stderr)
    for row in rows(a.c, a.ub, a.n, a.nrep, a.t, a.tb, a.ctk, a.ctv, a.k_repack, source):
        if a.delay:
            time.sleep(a.delay)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
