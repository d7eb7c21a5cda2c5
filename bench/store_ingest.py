"""Store ingest throughput: 1,000 simulated workers x 64 replayed rows into one SQLite store.

Issue 5 (b). Rows are pre-recorded (the real ik sweep-bench log in tests/fixtures,
replayed through the replay backend's row generator), so nothing but the
coordinator's path is measured: the rows of all workers arrive interleaved as
JSON lines, as the pinned workers' streams do; the consumer parses each line,
builds the Point and stores it. Write policies:

  per-point   one transaction per point (what DESIGN.md asks; the coordinator today)
  batch N     one transaction per N waiting rows (group commit via Store.add_points)

Prints rows/s and per-row overhead for each, plus how the per-row time splits
between parsing + Point construction and the store write. Goals from issue 5:
>= 50k rows/s, < 1 ms per row.

    .venv/bin/python bench/store_ingest.py [--workers 1000] [--rows 64] [--store PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.backends.replay import recorded, rows  # noqa: E402
from orchestrator.point import Point  # noqa: E402
from orchestrator.store import Store  # noqa: E402

LOG = ROOT / "tests" / "fixtures" / "ik-sweep-bench-xeon6980p-q8_0-32k.log"


def prerecorded(n_rows: int) -> list[str]:
    """One worker's stream: n_rows JSONL lines replayed from the real log's timings."""
    source = recorded(str(LOG))
    settings = {"c": 512 * n_rows, "ub": 512, "tg": 128, "threads": 88, "threads_batch": 128, "type_k": "q8_0",
                "type_v": "f16", "k_repack": "auto", "flash_attn": True}
    lines = [json.dumps(r) for r in rows(settings, source=source)]
    return lines[:n_rows]


def interleaved(n_workers: int, stream: list[str]) -> list[tuple[int, str]]:
    """What the coordinator's queue sees: every worker's rows, round-robin (worker w, row r)."""
    return [(w, line) for line in stream for w in range(n_workers)]


def ingest(store: Store, arrivals: list[tuple[int, str]], n_workers: int, batch: int) -> tuple[float, float, int]:
    """(wall seconds, seconds parsing lines + building Points, rows stored).

    Workers are separate processes in real runs, so they are not simulated as
    threads here (their GIL contention would be measured instead of the store).
    """
    run = store.create_run(settings={"bench": "store_ingest", "batch": batch})
    hosts = [store.upsert_host(fingerprint=f"sim-{i // 8}", profile=None, name=f"sim-host-{i // 8}", simulated=True)
             for i in range(0, n_workers, 8)]
    stored, build_s = 0, 0.0
    t0 = time.perf_counter()
    for start in range(0, len(arrivals), batch):
        b0 = time.perf_counter()
        points = [Point.from_sweep_row(json.loads(line), host_id=hosts[w // 8], slot=f"node{w % 8}",
                                       placement={"policy": "per-node", "node": w % 8},
                                       verified_cpus="0-1", verified_mems="0", noise=0.0, simulated=True)
                  for w, line in arrivals[start:start + batch]]
        build_s += time.perf_counter() - b0
        if batch == 1:
            stored += store.add_point(run, points[0])
        else:
            stored += store.add_points(run, points)
    wall = time.perf_counter() - t0
    store.finish_run(run, "ok")
    return wall, build_s, stored


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--store", help="store file (default: a fresh temporary one)")
    ap.add_argument("--no-report", action="store_true", help="skip timing a report of the per-point run")
    a = ap.parse_args(argv)
    stream = prerecorded(a.rows)
    total = a.workers * len(stream)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(a.store) if a.store else Path(tmp) / "ingest.db"
        print(f"store {path}: {a.workers} simulated workers x {len(stream)} rows = {total} rows")
        arrivals = interleaved(a.workers, stream)
        for batch in (1, 64, 1024):
            with Store.open(path) as store:
                wall, build, stored = ingest(store, arrivals, a.workers, batch)
            assert stored == total, (stored, total)
            name = "per-point  " if batch == 1 else f"batch {batch:<5}"
            print(f"{name}: {total / wall:9,.0f} rows/s  {wall / total * 1e6:7.1f} us/row "
                  f"(parse+Point {build / total * 1e6:5.1f} us, store {(wall - build) / total * 1e6:5.1f} us)  "
                  f"wall {wall:.2f} s")
        with Store.open(path) as store:
            print(f"stored points: {store.count_points()} (file {path.stat().st_size / 2**20:.1f} MiB)")
            if not a.no_report:
                from orchestrator.report import write_report

                t0 = time.perf_counter()
                html = write_report(store, [1], Path(tmp) / "report")
                print(f"report of run 1 ({total} points, {a.workers} series): {time.perf_counter() - t0:.1f} s, "
                      f"report.md {(html.parent / 'report.md').stat().st_size / 2**20:.1f} MiB, "
                      f"report.html {html.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
