"""An external sweep-bench binary from an argv template (no shell).

The template's placeholders are engine.options names in braces ({model} {c} {ub} {tg}
{threads} {threads_batch} {type_k} ...); bool settings are whole arguments that become
their flag or vanish ({rtr} -> -rtr), and {fa} renders by the build's fa_syntax
(``-fa on|off``, or ``-fa``/nothing for older builds). orchestrator.builds decides what is
passed, fixed or unknown. Output (stdout and stderr: ik prints its table on stderr) is
parsed with ``orchestrator.importers.parse_sweep_bench_text``, the parser of
``numasweep import``.
"""
from __future__ import annotations

from orchestrator.builds import render
from orchestrator.errors import ImportFormatError
from orchestrator.jobs import Job


class _TableParser:
    """Re-parses everything seen so far whenever a row-like line arrives; returns new rows."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.emitted = 0

    def __call__(self, line: str) -> list[dict]:
        from orchestrator.importers.sweep_bench import parse_sweep_bench_text

        self.lines.append(line.rstrip("\n"))
        text = line.strip()
        if not (text.startswith("|") or text.startswith("{")):
            return []
        try:
            rows = parse_sweep_bench_text("\n".join(self.lines), name="external output").rows
        except ImportFormatError:
            return []  # header or separator only: no rows yet
        new = list(rows[self.emitted:])
        self.emitted = len(rows)
        return new


class ExternalBackend:
    name = "external"
    merge_stderr = True

    def argv(self, job: Job) -> list[str]:
        return render(job.build, job.settings.as_dict(), job.model)

    def row_parser(self):
        return _TableParser()
