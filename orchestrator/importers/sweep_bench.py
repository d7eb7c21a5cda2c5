"""llama-sweep-bench output (ik_llama.cpp or numasweep bench): table and/or JSONL rows in a log.

The same function parses a whole captured log for ``numasweep import`` and the
stdout/stderr of an external sweep-bench run by the pinned worker: table rows
(``|   512 |    128 |      0 |    4.785 | ...``), JSONL rows (``{"n_kv_max": ...}``)
and everything around them (``main:`` line, model metadata, host state).
"""
from __future__ import annotations

import json
import re

from engine import sweep_table
from orchestrator.errors import ImportFormatError
from orchestrator.importers import log_meta
from orchestrator.importers.parsed import MEASUREMENT_KEYS, ParsedLog, assign_reps, common_settings

TABLE_HEADER = sweep_table.HEADER_RE
_SEPARATOR = re.compile(r"^\|[\s\-:|]+\|\s*$")
SWEEP_KEYS = ("pp", "tg", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg")
# `main:` line keys that describe the run; copied onto table rows (JSONL rows carry them).
MAIN_KEYS = ("n_kv_max", "n_batch", "n_ubatch", "flash_attn", "n_gpu_layers", "n_threads", "n_threads_batch")


def looks_like_sweep_bench(text: str) -> bool:
    return any(TABLE_HEADER.match(line.strip()) for line in text.splitlines()) or '"speed_pp"' in text


def parse_sweep_bench_text(text: str, name: str = "<text>") -> ParsedLog:
    """Parse sweep-bench output. Raises ImportFormatError naming ``name`` and the line."""
    lines = text.splitlines()
    meta, cmd_settings = log_meta.extract(lines)
    rows: list[dict] = []
    numbers: list[int] = []
    main: dict = {}
    in_table = False
    for i, raw in enumerate(lines, start=1):
        line = raw.strip().lstrip("\ufeff")
        if (m := log_meta.main_line_settings(line)) is not None:
            main = m
            continue
        if TABLE_HEADER.match(line):
            in_table = True
            continue
        if in_table:
            if _SEPARATOR.match(line):
                continue
            if line.startswith("|"):
                rows.append({**main, **_table_row(line, name, i)})
                numbers.append(i)
                continue
            in_table = False  # a table ends at its first non-table line
        if line.startswith("{") and '"speed_pp"' in line or line.startswith('{"n_kv_max"'):
            rows.append(_json_row(line, name, i))
            numbers.append(i)
    if not rows:
        raise ImportFormatError(f"{name}: no llama-sweep-bench rows found (expected a '| PP | TG | N_KV |' table or JSONL rows)")
    assign_reps(rows)
    settings = _run_settings(cmd_settings, rows)
    source = "sweep-bench-jsonl" if all(lines[n - 1].lstrip().startswith("{") for n in numbers) else "ik-sweep-bench"
    return ParsedLog(source=source, rows=tuple(rows), meta=meta, settings=settings, line_numbers=tuple(numbers))


def _table_row(line: str, name: str, lineno: int) -> dict:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != 7:
        raise ImportFormatError(f"{name}:{lineno}: sweep-bench table row has {len(cells)} columns, expected 7")
    try:
        pp, tg, n_kv = (int(c) for c in cells[:3])
        t_pp, s_pp, t_tg, s_tg = (float(c) for c in cells[3:])
    except ValueError:
        raise ImportFormatError(f"{name}:{lineno}: sweep-bench table row is not numeric: {line.strip()[:80]}") from None
    return dict(zip(SWEEP_KEYS, (pp, tg, n_kv, t_pp, s_pp, t_tg, s_tg)))


def _json_row(line: str, name: str, lineno: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ImportFormatError(f"{name}:{lineno}: bad JSON row: {exc.msg} at column {exc.colno}") from None
    if not isinstance(row, dict):
        raise ImportFormatError(f"{name}:{lineno}: JSON row is not an object")
    missing = [k for k in SWEEP_KEYS if k not in row]
    if missing:
        raise ImportFormatError(f"{name}:{lineno}: sweep-bench JSON row lacks {', '.join(missing)}")
    return row


def _run_settings(cmd_settings: dict, rows: list[dict]) -> dict:
    """Run-level settings: what every row shares, with command-line facts filling the gaps."""
    from orchestrator.point import normalize_settings

    settings = normalize_settings(common_settings(rows, MEASUREMENT_KEYS))
    for key, value in normalize_settings(cmd_settings).items():
        settings.setdefault(key, value)
    return settings
