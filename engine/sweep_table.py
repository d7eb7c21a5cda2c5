"""llama-sweep-bench's table, in one place: its columns, widths and row format.

``bench`` prints it row by row, ``numasweep run`` prints it per series (with rep and
noise columns), the report and exports lay out the same columns, and the importer
recognises its header. No numba here: the orchestrator imports it.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

COLUMNS = ("PP", "TG", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s")
_WIDTHS = (6, 6, 6, 8, 8, 8, 8)
# The header as any sweep-bench prints it (spacing aside), for parsers.
HEADER_RE = re.compile(r"^\|" + r"\|".join(r"\s*" + re.escape(c) + r"\s*" for c in COLUMNS) + r"\|")


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    # ik's layout: "|%6s | %6s | ... |" (the first cell without a leading space)
    return "|" + " | ".join(f"{c:>{w}}" for c, w in zip(cells, widths)) + " |"


def header(extra: Sequence[str] = ()) -> str:
    return _line(COLUMNS + tuple(extra), _WIDTHS + tuple(max(5, len(e)) for e in extra))


def rule(extra: Sequence[str] = ()) -> str:
    widths = _WIDTHS + tuple(max(5, len(e)) for e in extra)
    return "|" + "-|-".join("-" * w for w in widths) + "-|"


def cells(pp: int, tg: int, n_kv: int, t_pp: float, s_pp: float, t_tg: float, s_tg: float) -> tuple[str, ...]:
    return (f"{pp:d}", f"{tg:d}", f"{n_kv:d}", f"{t_pp:.3f}", f"{s_pp:.2f}", f"{t_tg:.3f}", f"{s_tg:.2f}")


def line(row_cells: Sequence[str], extra: Sequence[str] = (), extra_cells: Sequence[str] = ()) -> str:
    return _line(tuple(row_cells) + tuple(extra_cells), _WIDTHS + tuple(max(5, len(e)) for e in extra))


def render(rows: Iterable[Sequence[str]], extra: Sequence[str] = ()) -> str:
    """A whole table: rows of cells (the 7 columns, then one per ``extra`` header)."""
    out = [header(extra), rule(extra)]
    out += [_line(r, _WIDTHS + tuple(max(5, len(e)) for e in extra)) for r in rows]
    return "\n".join(out)
