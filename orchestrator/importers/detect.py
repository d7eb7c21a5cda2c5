"""Pick the parser for a file from its content (never from its name)."""
from __future__ import annotations

from pathlib import Path

from orchestrator.errors import ImportFormatError
from orchestrator.importers.limits import DEFAULT_LIMITS, ImportLimits, read_bounded
from orchestrator.importers.llama_bench import looks_like_llama_bench, parse_llama_bench_text
from orchestrator.importers.parsed import ParsedLog
from orchestrator.importers.sweep_bench import looks_like_sweep_bench, parse_sweep_bench_text


def read_text(path: str | Path, limits: ImportLimits = DEFAULT_LIMITS) -> tuple[bytes, str]:
    """(raw bytes, text) of a regular file within ``limits``. Logs carry mojibake and stray
    bytes: decode without ever failing."""
    raw = read_bounded(path, limits)
    return raw, raw.decode("utf-8", errors="replace")


def parse_text(text: str, name: str = "<text>", limits: ImportLimits = DEFAULT_LIMITS) -> ParsedLog:
    if looks_like_sweep_bench(text):
        return parse_sweep_bench_text(text, name, limits)
    if looks_like_llama_bench(text):
        return parse_llama_bench_text(text, name, limits)
    raise ImportFormatError(
        f"{name}: unrecognised format (expected llama-sweep-bench table/JSONL, or llama-bench md/csv/json/jsonl/sql)"
    )


def parse_file(path: str | Path, limits: ImportLimits = DEFAULT_LIMITS) -> ParsedLog:
    _, text = read_text(path, limits)
    if not text.strip():
        raise ImportFormatError(f"{path}: empty file")
    return parse_text(text, str(path), limits)
