"""llama-bench results (mainline llama.cpp and ik_llama.cpp) in md, csv, json, jsonl and sql.

Each llama-bench test becomes sweep-bench-style rows: ``pp512 @ d4096`` -> pp=512,
n_kv=4096 (PP phase only, tg=0); ``tg128`` -> tg=128; ik's ``tg128@pp512`` -> tg=128
at n_kv=512. JSON/JSONL carry every repetition (``samples_ns``): one row per sample,
so reports get real repetitions; md/csv/sql carry only the mean (one row, rep 0).
Combined ``pp+tg`` tests time both phases together and cannot be split: they
are skipped and counted in ``meta["skipped_tests"]``.
"""
from __future__ import annotations

import csv
import io
import json
import re

from orchestrator.errors import ImportFormatError
from orchestrator.importers.limits import DEFAULT_LIMITS, ImportLimits
from orchestrator.importers.parsed import MEASUREMENT_KEYS, ParsedLog, common_settings
from orchestrator.importers.sql_dump import read_sql_dump

# llama-bench field -> numasweep setting (ik's `repack` is -rtr; mainline's is loader policy).
SETTING_FIELDS = {
    "model_filename": "model", "model_type": "model_type", "n_batch": "batch", "n_ubatch": "ubatch",
    "n_threads": "threads", "type_k": "type_k", "type_v": "type_v", "n_gpu_layers": "n_gpu_layers",
    "flash_attn": "flash_attn", "split_mode": "split_mode", "no_kv_offload": "no_kv_offload",
    "use_mmap": "use_mmap", "embeddings": "embeddings", "cpu_mask": "cpu_mask", "cpu_strict": "cpu_strict",
    "poll": "poll", "n_cpu_moe": "n_cpu_moe", "mla_attn": "mla", "attn_max_batch": "amb", "ser": "ser",
    "fused_moe": "fmoe", "use_thp": "use_thp", "backends": "backend", "model_size": "model_size",
    "model_n_params": "model_n_params",
}
META_FIELDS = ("build_commit", "build_number", "cpu_info", "gpu_info")
# Markdown display names -> fields (both flavours' printers).
MD_COLUMNS = {
    "model": "model_type", "size": "model_size", "params": "model_n_params", "backend": "backends",
    "ngl": "n_gpu_layers", "threads": "n_threads", "n_batch": "n_batch", "n_ubatch": "n_ubatch",
    "type_k": "type_k", "type_v": "type_v", "fa": "flash_attn", "mla": "mla_attn", "amb": "attn_max_batch",
    "rtr": "repack", "fmoe": "fused_moe", "mmap": "use_mmap", "sm": "split_mode", "nkvo": "no_kv_offload",
    "ser": "ser", "thp": "use_thp", "embd": "embeddings", "test": "test", "t/s": "t/s",
}
_TEST = re.compile(r"^(?:pp\s*(?P<pp>\d+))?(?:\+)?(?:tg\s*(?P<tg>\d+))?(?:\s*@\s*(?:d(?P<d>\d+)|pp(?P<gp>\d+)))?$")
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"  # one spelling each: linear even on a 1 MiB cell
_TS = re.compile(rf"^\s*({_NUMBER})\s*(?:±|\+/-|\+-)\s*({_NUMBER})\s*$")


def looks_like_llama_bench(text: str) -> bool:
    head = text[:20000]
    return ("n_prompt" in head and ("avg_ts" in head or "avg_ns" in head)) or bool(
        re.search(r"^\|\s*model\s*\|.*\|\s*test\s*\|\s*t/s\s*\|", head, re.M)
    )


def parse_llama_bench_text(text: str, name: str = "<text>", limits: ImportLimits = DEFAULT_LIMITS) -> ParsedLog:
    """Parse any llama-bench output format (detected from the text)."""
    stripped = text.lstrip("\ufeff \t\r\n")
    flavour = None
    if re.search(r"^\s*CREATE TABLE", text, re.M | re.I):
        (records, flavour), fmt = read_sql_dump(text, name, limits), "sql"
    elif stripped.startswith("["):
        records, fmt = _json_records(text, name), "json"
    elif stripped.startswith("{"):
        records, fmt = _jsonl_records(text, name, limits), "jsonl"
    elif re.search(r"^\|\s*model\s*\|", text, re.M):
        return _markdown(text, name, limits)
    else:
        records, fmt = _csv_records(text, name, limits), "csv"
    if len(records) > limits.rows:
        raise limits.refuse("rows", f"{name}: {len(records)} llama-bench records are too many")
    if flavour is None:
        # ik's test records carry MLA fields and a `test` label; mainline's do not.
        flavour = "ik-llama-bench" if records and "mla_attn" in records[0][1] else "llama-bench"
    return _to_parsed(records, flavour, name, fmt=fmt, limits=limits)


# -- record readers: each returns [(line, {field: value})] -------------------------------
def _json_records(text: str, name: str) -> list[tuple[int, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFormatError(f"{name}:{exc.lineno}: bad llama-bench JSON: {exc.msg}") from None
    except RecursionError:
        raise ImportFormatError(f"{name}: llama-bench JSON is nested too deeply") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ImportFormatError(f"{name}:1: llama-bench JSON must be an array of objects")
    # Object i starts where its `{` is: find line numbers for messages.
    starts = [i + 1 for i, line in enumerate(text.splitlines()) if line.strip() in ("{", "},", "}, {")]
    return [(starts[i] if i < len(starts) else 1, r) for i, r in enumerate(data)]


def _jsonl_records(text: str, name: str, limits: ImportLimits) -> list[tuple[int, dict]]:
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ImportFormatError(f"{name}:{i}: bad llama-bench JSONL row: {exc.msg}") from None
        except RecursionError:
            raise ImportFormatError(f"{name}:{i}: llama-bench JSONL row is nested too deeply") from None
        if not isinstance(rec, dict):
            raise ImportFormatError(f"{name}:{i}: llama-bench JSONL row is not an object")
        out.append((i, rec))
        if len(out) > limits.rows:
            raise limits.refuse("rows", f"{name}:{i}: more than {limits.rows} llama-bench records")
    return out


def _csv_records(text: str, name: str, limits: ImportLimits) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = reader.fieldnames  # reads the first row: a field over csv's size limit raises here
    except csv.Error as exc:
        raise ImportFormatError(f"{name}:1: bad CSV header: {exc}") from None
    if not header or "n_prompt" not in header:
        raise ImportFormatError(f"{name}:1: not a llama-bench CSV header (no n_prompt column)")
    out = []
    try:
        for rec in reader:
            if None in rec or any(v is None for v in rec.values()):
                raise ImportFormatError(f"{name}:{reader.line_num}: CSV row has the wrong number of columns")
            out.append((reader.line_num, rec))
            if len(out) > limits.rows:
                raise limits.refuse("rows", f"{name}:{reader.line_num}: more than {limits.rows} llama-bench records")
    except csv.Error as exc:
        raise ImportFormatError(f"{name}:{reader.line_num}: bad CSV: {exc}") from None
    return out


# -- records -> rows ---------------------------------------------------------------------
def _num(value, what: str, name: str, line: int):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    try:
        text = str(value).strip()
        return int(text) if re.fullmatch(r"-?\d+", text) else float(text)
    except (TypeError, ValueError):
        raise ImportFormatError(f"{name}:{line}: field {what} is not a number: {value!r}") from None


def _setting_value(value):
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+", text):
            return int(text)
        if text in ("true", "false"):
            return text == "true"
        return text
    return value


def _phases(n_prompt: int, n_gen: int, n_depth: int, label: str | None):
    """(pp, tg, n_kv) of one llama-bench test, or None for a combined pp+tg test."""
    if label and "@pp" in label.replace(" ", ""):  # ik: tg128@pp512 = TG after a 512-token prompt
        return 0, n_gen, n_prompt
    if n_prompt > 0 and n_gen > 0:
        return None
    return n_prompt, n_gen, n_depth


def _to_parsed(records: list[tuple[int, dict]], source: str, name: str, fmt: str | None,
               limits: ImportLimits = DEFAULT_LIMITS) -> ParsedLog:
    rows, lines, skipped = [], [], []
    meta: dict = {}
    for line, rec in records:
        for key in ("n_prompt", "n_gen"):
            if key not in rec:
                raise ImportFormatError(f"{name}:{line}: llama-bench record lacks {key}")
        n_prompt = _num(rec["n_prompt"], "n_prompt", name, line)
        n_gen = _num(rec["n_gen"], "n_gen", name, line)
        n_depth = _num(rec.get("n_depth") or 0, "n_depth", name, line)
        phases = _phases(n_prompt, n_gen, n_depth, rec.get("test"))
        if phases is None:
            skipped.append(rec.get("test") or f"pp{n_prompt}+tg{n_gen}")
            continue
        pp, tg, n_kv = phases
        settings = {}
        for field, setting in SETTING_FIELDS.items():
            if field in rec and rec[field] is not None:
                settings[setting] = _setting_value(rec[field])
        if "repack" in rec:
            settings["rtr" if source.startswith("ik") else "repack"] = _setting_value(rec["repack"])
        for field in META_FIELDS:
            if rec.get(field) not in (None, ""):
                meta.setdefault(field, _setting_value(rec[field]))
        tokens = pp + tg
        samples = rec.get("samples_ns")
        if isinstance(samples, str):  # some SQL dumps keep arrays as text
            samples = [s for s in re.split(r"[\s,\[\]]+", samples) if s]
        if samples:
            times = [_num(s, "samples_ns", name, line) / 1e9 for s in samples]
        else:
            if "avg_ns" not in rec:
                raise ImportFormatError(f"{name}:{line}: llama-bench record lacks avg_ns")
            times = [_num(rec["avg_ns"], "avg_ns", name, line) / 1e9]
        for rep, t in enumerate(times):
            if t <= 0:
                raise ImportFormatError(f"{name}:{line}: non-positive test time {t}")
            speed = tokens / t
            row = {**settings, "n_kv": n_kv, "pp": pp, "tg": tg, "rep": rep,
                   "t_pp": t if pp else 0.0, "speed_pp": speed if pp else 0.0,
                   "t_tg": t if tg else 0.0, "speed_tg": speed if tg else 0.0}
            rows.append(row)
            lines.append(line)
            if len(rows) > limits.rows:
                raise limits.refuse("rows", f"{name}:{line}: more than {limits.rows} measured rows")
    if not rows:
        raise ImportFormatError(f"{name}: no usable llama-bench tests (pp/tg tests; combined pp+tg cannot be split)")
    if skipped:
        meta["skipped_tests"] = skipped
    if fmt:
        meta["format"] = fmt
    return ParsedLog(source=source, rows=tuple(rows), meta=meta,
                     settings=common_settings(rows, MEASUREMENT_KEYS), line_numbers=tuple(lines))


def _markdown(text: str, name: str, limits: ImportLimits = DEFAULT_LIMITS) -> ParsedLog:
    records = []
    header: list[str] | None = None
    meta: dict = {}
    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if m := re.match(r"^build:\s*(\S+)\s*\((\d+)\)", line):
            meta["build_commit"], meta["build_number"] = m.group(1), int(m.group(2))
        if not line.startswith("|"):
            header = None if not line else header
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            if "test" in cells and "t/s" in cells:
                header = [MD_COLUMNS.get(c, c) for c in cells]
            continue
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        if len(cells) != len(header):
            raise ImportFormatError(f"{name}:{i}: llama-bench table row has {len(cells)} columns, header {len(header)}")
        rec = dict(zip(header, cells))
        label = rec["test"].strip()
        m = _TEST.match(label.replace("pp ", "pp").replace("tg ", "tg"))
        ts = _TS.match(rec["t/s"])
        if not m or not (m.group("pp") or m.group("tg")) or not ts:
            raise ImportFormatError(f"{name}:{i}: cannot read llama-bench test {label!r} / t/s {rec['t/s']!r}")
        n_prompt, n_gen = int(m.group("pp") or 0), int(m.group("tg") or 0)
        depth = int(m.group("d") or 0)
        if m.group("gp"):
            n_prompt = int(m.group("gp"))
        mean = float(ts.group(1))
        tokens = n_gen if m.group("gp") else n_prompt + n_gen
        if mean <= 0:
            raise ImportFormatError(f"{name}:{i}: t/s must be positive, got {mean}")
        rec.update(n_prompt=n_prompt, n_gen=n_gen, n_depth=depth, avg_ns=tokens / mean * 1e9,
                   stddev_ts=float(ts.group(2)))
        rec.pop("t/s")
        records.append((i, rec))
        if len(records) > limits.rows:
            raise limits.refuse("rows", f"{name}:{i}: more than {limits.rows} llama-bench records")
    if not records:
        raise ImportFormatError(f"{name}: no llama-bench markdown table rows found")
    ik = any("@pp" in r["test"] for _, r in records) or any(k in records[0][1] for k in ("mla_attn", "fused_moe", "repack"))
    parsed = _to_parsed(records, "ik-llama-bench" if ik else "llama-bench", name, fmt="md", limits=limits)
    return ParsedLog(source=parsed.source, rows=parsed.rows, meta={**meta, **parsed.meta},
                     settings=parsed.settings, line_numbers=parsed.line_numbers)
