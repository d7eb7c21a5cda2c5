"""What every importer returns: rows in sweep-bench JSONL form plus run-level facts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import ImportFormatError, StoreError
from orchestrator.point import Point


@dataclass(frozen=True)
class ParsedLog:
    """One parsed output file or text.

    ``rows`` are dicts with sweep-bench JSONL keys (pp, tg, n_kv, t_pp, speed_pp,
    t_tg, speed_tg, rep, n_threads, ...) accepted by ``Point.from_sweep_row``;
    ``line_numbers`` gives each row's source line for error messages.
    """
    source: str                       # ik-sweep-bench | sweep-bench-jsonl | llama-bench | ik-llama-bench
    rows: tuple[dict, ...]
    meta: dict = field(default_factory=dict)       # command, model facts, host state, skipped tests ...
    settings: dict = field(default_factory=dict)   # run-level settings (those common to all rows)
    line_numbers: tuple[int, ...] = ()

    def points(self, name: str = "<text>", **extra: Any) -> list[Point]:
        """Rows as validated Points; a bad row raises naming ``name`` and its line."""
        out = []
        extra_settings = extra.pop("settings", None) or {}
        for i, row in enumerate(self.rows):
            try:
                row_settings = Point.from_sweep_row(row).settings
                # Run-level facts (command line, log) under the row's own, caller's on top.
                settings = {**self.settings, **row_settings, **extra_settings}
                out.append(Point.from_sweep_row(row, **extra, settings=settings))
            except StoreError as exc:
                line = self.line_numbers[i] if i < len(self.line_numbers) else "?"
                raise ImportFormatError(f"{name}:{line}: {exc}") from None
        return out


def common_settings(rows: list[dict], skip: frozenset[str]) -> dict:
    """Keys whose value is the same in every row (measurement keys in ``skip`` excluded)."""
    if not rows:
        return {}
    first = {k: v for k, v in rows[0].items() if k not in skip}
    return {k: v for k, v in first.items() if all(r.get(k, object()) == v for r in rows[1:])}


MEASUREMENT_KEYS = frozenset(
    {"pp", "tg", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg", "rep", "rss_hwm_mib", "repack_scratch_mib",
     "repack_scratch_hwm_mib", "noise"}
)


def assign_reps(rows: list[dict]) -> None:
    """Number repeated measurements of the same (settings, pp, tg, n_kv) 0, 1, 2 ... in order."""
    seen: dict[tuple, int] = {}
    for row in rows:
        if "rep" in row:
            continue
        key = tuple(sorted((k, repr(v)) for k, v in row.items() if k not in MEASUREMENT_KEYS - {"pp", "tg", "n_kv"}))
        row["rep"] = seen.get(key, 0)
        seen[key] = row["rep"] + 1
