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
        argv = [sys.executable, "-m", "orchestrator.backends.replay", "--settings",
                json.dumps(job.settings.as_dict()), "--delay", str(job.build.delay_s)]
        if job.build.replay:
            argv += ["--file", job.build.replay]
        return argv

    def row_parser(self):
        return jsonl_rows


def recorded(path: str) -> list[dict]:
    from orchestrator.importers.sweep_bench import parse_sweep_bench_text

    return list(parse_sweep_bench_text(Path(path).read_text(), name=path).rows)


def rows(settings: dict, source: list[dict] | None = None):
    """One row per timed N_KV, echoing ``settings`` like the engine does."""
    c, ub, tg = settings["c"], settings["ub"], settings["tg"]
    by_kv = {r["n_kv"]: r for r in source or ()}
    for i, n_kv in enumerate(range(0, c, ub)[::settings.get("sweep_stride", 1)]):
        if source:
            rec = by_kv.get(n_kv) or source[i % len(source)]
            t_pp = rec["t_pp"] * ub / rec["pp"]
            t_tg = rec["t_tg"] * tg / rec["tg"]
        else:  # a plausible shape: both phases slow down with depth
            t_pp = ub / 400.0 * (1 + n_kv / 4096)
            t_tg = tg / 40.0 * (1 + n_kv / 16384)
        yield {**settings, "n_gpu_layers": 0, "pp": ub, "tg": tg, "n_kv": n_kv,
               "t_pp": round(t_pp, 6), "speed_pp": round(ub / t_pp, 3), "t_tg": round(t_tg, 6),
               "speed_tg": round(tg / t_tg, 3), "rss_hwm_mib": 64.0, "repack_scratch_mib": 0.0, "rep": 0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.backends.replay")
    p.add_argument("--settings", required=True, help="the job's settings (JSON, engine.options names)")
    p.add_argument("--delay", type=float, default=0.0, help="seconds before each row")
    p.add_argument("--file", default=None)
    a = p.parse_args(argv)
    settings = json.loads(a.settings)
    source = recorded(a.file) if a.file else None
    print(f"replay: {settings}", file=sys.stderr)
    for row in rows(settings, source):
        if a.delay:
            time.sleep(a.delay)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
