"""Importers: other tools' benchmark output -> rows for the results store.

``parse_text`` / ``parse_file`` detect the format; ``parse_sweep_bench_text`` is
also what the pinned worker uses on an external llama-sweep-bench's output.
``import_files`` (in ``orchestrator.importers.ingest``) writes them to a Store.
"""
from orchestrator.importers.detect import parse_file, parse_text, read_text
from orchestrator.importers.llama_bench import parse_llama_bench_text
from orchestrator.importers.parsed import ParsedLog
from orchestrator.importers.sweep_bench import parse_sweep_bench_text

__all__ = ["ParsedLog", "parse_file", "parse_text", "read_text", "parse_sweep_bench_text", "parse_llama_bench_text"]
