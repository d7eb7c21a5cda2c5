"""Pick the parser for a file from its content (never from its name)."""
from __future__ import annotations

from pathlib import Path

from orchestrator.errors import ImportFormatError
from orchestrator.importers.llama_bench import looks_like_llama_bench, parse_llama_bench_text
from orchestrator.importers.parsed import ParsedLog
from orchestrator.importers.sweep_bench import looks_like_sweep_bench, parse_sweep_bench_text


def read_text(path: str | Path) -> tuple[bytes, str]:
    """(raw bytes, text). Logs carry mojibake and stray bytes: decode without ever failing."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ImportFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return raw, raw.decode("utf-8", errors="replace")


def parse_text(text: str, name: str = "<text>") -> ParsedLog:
    if looks_like_sweep_bench(text):
        return parse_sweep_bench_text(text, name)
    if looks_like_llama_bench(text):
        return parse_llama_bench_text(text, name)
    raise ImportFormatError(
        f"{name}: unrecognised format (expected llama-sweep-bench table/JSONL, or llama-bench md/csv/json/jsonl/sql)"
    )


def parse_file(path: str | Path) -> ParsedLog:
    _, text = read_text(path)
    if not text.strip():
        raise ImportFormatError(f"{path}: empty file")
    return parse_text(text, str(path))
