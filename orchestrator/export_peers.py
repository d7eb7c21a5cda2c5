"""Exports that other projects' scripts read.

- ``sweep-bench-md``: one ik_llama.cpp sweep-bench markdown table per series, one file
  each, named after the series label (``[A-Za-z0-9._-]``, others ``_``, plus ``.md``).
  ik's ``examples/sweep-bench/sweep-bench-plot.py`` reads each file as a table whose
  first line is the header and second the rule (skipped), every following line a row
  with numeric ``N_KV``, ``S_PP t/s`` and ``S_TG t/s``; the file name labels its line.
  Repetitions are separate rows (the script plots their mean and sd per N_KV).
- ``llama-bench-sqlite``: a SQLite database as ``llama-bench -o sql | sqlite3`` makes,
  one row per (build, settings, test): a sweep row's PP phase is the test
  ``n_prompt = pp, n_gen = 0, n_depth = N_KV`` and its TG phase ``n_prompt = 0,
  n_gen = tg, n_depth = N_KV``; avg/stddev over the repetitions; ``build_commit`` is the
  build's name. Mainline's ``scripts/compare-llama-bench.py`` reads the table
  ``llama_bench`` (its current name) and keys on ``n_depth``; ik's older copy reads
  ``test`` (a view of the same rows here) and ignores depth. Every key column of both
  scripts is filled (they join on equality, and NULL never equals NULL); what numasweep
  does not know is 0 or "" (model size, build number). Settings that have no llama-bench
  column and differ between the exported series (``k_repack``, ...) are appended to
  ``model_type`` in brackets, so the scripts never pool different settings.
"""
from __future__ import annotations

import math
import re
import sqlite3
from collections import defaultdict
from pathlib import Path

from orchestrator.errors import StoreError
from orchestrator.store import Store

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(label: str) -> str:
    """A series label as a file name: ``[A-Za-z0-9._-]`` kept, everything else ``_``."""
    name = _UNSAFE.sub("_", label).strip(".") or "series"
    return name[:200]


def _select(store: Store, run_id: int | None) -> tuple[list[dict], dict[int, dict]]:
    runs = {r["id"]: r for r in store.runs()}
    if run_id is not None and run_id not in runs:
        raise StoreError(f"{store.path}: no run {run_id}")
    points = store.points(run_id)
    if not points:
        raise StoreError(f"{store.path}: no points to export" + (f" in run {run_id}" if run_id is not None else ""))
    return points, runs


# -- ik sweep-bench tables ---------------------------------------------------------------
def write_sweep_bench_md(store: Store, out_dir, run_id: int | None = None) -> tuple[list[Path], list[str]]:
    """One table file per series into ``out_dir``; returns (files written, notes on series left out)."""
    from engine.sweep import TABLE_HEADER, TABLE_RULE, SweepRow
    from orchestrator.report_data import build_series

    points, runs = _select(store, run_id)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise StoreError(f"-o {out}: not a directory (sweep-bench-md writes one file per series into a directory)")
    written, notes, used = [], [], set()
    tables = []
    for s in build_series(points, runs):
        rows = sorted((p for p in s.points if p["pp"] > 0 and p["tg"] > 0), key=lambda p: (p["n_kv"], p["rep"]))
        if not rows:  # llama-bench tests measure one phase each: no sweep row to write
            notes.append(f"{s.label}: no point measured both PP and TG (a llama-bench import?); not written")
            continue
        name = safe_name(s.label)
        stem, n = name, 2
        while name in used:  # two labels that differ only in unsafe characters
            name, n = f"{stem}_{n}", n + 1
        used.add(name)
        lines = [TABLE_HEADER, TABLE_RULE] + [
            SweepRow(pp=p["pp"], tg=p["tg"], n_kv=p["n_kv"], t_pp=p["t_pp"], speed_pp=p["speed_pp"],
                     t_tg=p["t_tg"], speed_tg=p["speed_tg"], rss_hwm_mib=p["rss_hwm_mib"] or 0.0).table_line()
            for p in rows]
        tables.append((out / f"{name}.md", "\n".join(lines) + "\n"))
    if not tables:
        raise StoreError(f"{store.path}: no series with sweep rows (PP and TG at each N_KV) to export")
    out.mkdir(parents=True, exist_ok=True)
    for path, text in tables:
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written, notes


# -- llama-bench SQLite --------------------------------------------------------------------
# Mainline's llama-bench fields (as its compare script lists them) and their SQL types,
# then ik_llama.cpp's fields that its compare script keys on or that numasweep knows.
LLAMA_BENCH_COLUMNS = (
    ("build_commit", "TEXT"), ("build_number", "INTEGER"), ("cpu_info", "TEXT"), ("gpu_info", "TEXT"),
    ("backends", "TEXT"), ("model_filename", "TEXT"), ("model_type", "TEXT"), ("model_size", "INTEGER"),
    ("model_n_params", "INTEGER"), ("n_batch", "INTEGER"), ("n_ubatch", "INTEGER"), ("n_threads", "INTEGER"),
    ("cpu_mask", "TEXT"), ("cpu_strict", "INTEGER"), ("poll", "INTEGER"), ("type_k", "TEXT"), ("type_v", "TEXT"),
    ("n_gpu_layers", "INTEGER"), ("split_mode", "TEXT"), ("main_gpu", "INTEGER"), ("no_kv_offload", "INTEGER"),
    ("flash_attn", "INTEGER"), ("tensor_split", "TEXT"), ("tensor_buft_overrides", "TEXT"), ("use_mmap", "INTEGER"),
    ("embeddings", "INTEGER"), ("no_op_offload", "INTEGER"), ("n_prompt", "INTEGER"), ("n_gen", "INTEGER"),
    ("n_depth", "INTEGER"), ("test_time", "TEXT"), ("avg_ns", "INTEGER"), ("stddev_ns", "INTEGER"),
    ("avg_ts", "REAL"), ("stddev_ts", "REAL"),
    # ik_llama.cpp
    ("cuda", "INTEGER"), ("vulkan", "INTEGER"), ("metal", "INTEGER"), ("sycl", "INTEGER"), ("rpc", "TEXT"),
    ("gpu_blas", "INTEGER"), ("blas", "INTEGER"), ("mla_attn", "INTEGER"), ("attn_max_batch", "INTEGER"),
    ("fused_moe", "INTEGER"), ("repack", "INTEGER"), ("test", "TEXT"),
)
# numasweep settings that have a llama-bench column (or are measurements / facts, not settings).
_MAPPED = {"model", "model_type", "b", "ub", "threads", "type_k", "type_v", "n_gpu_layers", "flash_attn",
           "mla", "amb", "fmoe", "rtr", "no_mmap", "use_mmap", "embeddings", "weight_bytes", "model_size",
           "model_n_params", "build_commit", "build_number", "cpu_mask", "backend", "cpu_strict", "poll",
           "split_mode", "no_kv_offload"}


def build_of(point: dict, run: dict) -> str:
    """The build a point was measured with, by name: the store's build, else what the run says
    (an imported llama-bench's build_commit, numasweep's own commit), else the run."""
    name = point.get("build")
    if name:
        return str(name)
    meta = run.get("meta") or {}
    if meta.get("build_commit"):
        return str(meta["build_commit"])
    if run.get("git_commit"):
        return str(run["git_commit"])[:8]
    return f"run{run['id']}"


def _mask(cpulist: str | None) -> str:
    if not cpulist:
        return "0x0"
    from hostprofiles.cpulist import parse_cpulist

    return hex(sum(1 << c for c in parse_cpulist(cpulist)))


def _int(value, default: int = 0) -> int:
    if isinstance(value, bool):
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _flag(value) -> int:
    if isinstance(value, str):
        return int(value.lower() in ("1", "on", "true", "yes"))
    return int(bool(value))


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _iso(ts: str) -> str:
    return str(ts)[:19] + "Z"  # llama-bench's test_time: 2025-04-24T11:57:09Z (UTC)


def llama_bench_rows(points: list[dict], runs: dict[int, dict], hosts: dict[int, dict]) -> list[dict]:
    """One llama-bench record per (run, host, slot, build, settings, phase, N_KV), repetitions pooled."""
    extra_keys = sorted({k for p in points for k in p["settings"]} - _MAPPED)
    varying = [k for k in extra_keys if len({repr(p["settings"].get(k)) for p in points}) > 1]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in points:
        build = build_of(p, runs[p["run_id"]])
        for phase in ("pp", "tg"):
            if p[phase] > 0:
                groups[(p["run_id"], p["host_id"], p["slot"], build, p["settings_key"], phase, p[phase],
                        p["n_kv"])].append(p)
    rows = []
    for (run_id, host_id, _slot, build, _key, phase, size, n_kv), ps in sorted(groups.items(), key=lambda kv: str(kv[0])):
        s = ps[0]["settings"]
        host = hosts.get(host_id) or {}
        profile = host.get("profile") or {}
        extras = [f"{k}={s[k]}" for k in varying if s.get(k) is not None]
        model = str(s.get("model_type") or Path(str(s.get("model") or "unknown model")).name)
        times = [p[f"t_{phase}"] for p in ps]
        speeds = [p[f"speed_{phase}"] for p in ps]
        rows.append({
            "build_commit": build, "build_number": _int(s.get("build_number")),
            "cpu_info": str(profile.get("cpu_model") or host.get("name") or ""), "gpu_info": "",
            "backends": str(s.get("backend") if s.get("backend") not in (None, "builtin", "external", "replay")
                            else "CPU"),
            "model_filename": str(s.get("model") or ""),
            "model_type": model + (f" [{' '.join(extras)}]" if extras else ""),
            "model_size": _int(s.get("model_size")), "model_n_params": _int(s.get("model_n_params")),
            "n_batch": _int(s.get("b")), "n_ubatch": _int(s.get("ub"), ps[0]["pp"]),
            "n_threads": _int(s.get("threads")),
            "cpu_mask": str(s["cpu_mask"]) if s.get("cpu_mask") else _mask(ps[0]["verified_cpus"]),
            "cpu_strict": _flag(s.get("cpu_strict")), "poll": _int(s.get("poll")),
            "type_k": str(s.get("type_k") or ""), "type_v": str(s.get("type_v") or ""),
            "n_gpu_layers": _int(s.get("n_gpu_layers")), "split_mode": str(s.get("split_mode") or "none"),
            "main_gpu": 0, "no_kv_offload": _flag(s.get("no_kv_offload")),
            "flash_attn": _flag(s["flash_attn"]) if "flash_attn" in s else -1, "tensor_split": "0.00",
            "tensor_buft_overrides": "none",
            "use_mmap": 0 if _flag(s.get("no_mmap")) or _flag(s.get("rtr")) else _flag(s.get("use_mmap", True)),
            "embeddings": 0, "no_op_offload": 0,
            "n_prompt": size if phase == "pp" else 0, "n_gen": size if phase == "tg" else 0, "n_depth": n_kv,
            "test_time": _iso(max(p["created_at"] for p in ps)),
            "avg_ns": round(math.fsum(times) / len(times) * 1e9), "stddev_ns": round(_sd(times) * 1e9),
            "avg_ts": math.fsum(speeds) / len(speeds), "stddev_ts": _sd(speeds),
            "cuda": 0, "vulkan": 0, "metal": 0, "sycl": 0, "rpc": "", "gpu_blas": 0, "blas": 0,
            "mla_attn": _int(s.get("mla")), "attn_max_batch": _int(s.get("amb")), "fused_moe": _flag(s.get("fmoe")),
            "repack": _flag(s.get("rtr")),
            "test": f"{phase}{size}" + (f" @ d{n_kv}" if n_kv else ""),
        })
    return rows


def write_llama_bench_sqlite(store: Store, path, run_id: int | None = None) -> int:
    """Write the database (a new file; an existing one is refused); returns the number of test rows."""
    points, runs = _select(store, run_id)
    path = Path(path)
    if path.exists():
        raise StoreError(f"-o {path}: exists; llama-bench-sqlite writes a new database (remove it first)")
    rows = llama_bench_rows(points, runs, {h["id"]: h for h in store.hosts()})
    names = [c for c, _ in LLAMA_BENCH_COLUMNS]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        with con:
            con.execute(f"CREATE TABLE llama_bench ({', '.join(f'{c} {t}' for c, t in LLAMA_BENCH_COLUMNS)})")
            con.execute("CREATE VIEW test AS SELECT * FROM llama_bench")
            con.executemany(f"INSERT INTO llama_bench ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                            [tuple(r[c] for c in names) for r in rows])
    finally:
        con.close()
    tmp.replace(path)
    return len(rows)
