"""An external sweep-bench binary from an argv template (no shell).

Placeholders in template arguments: {model} {c} {ub} {tg} {threads}
{threads_batch} {type_k} {type_v} {k_repack} {nrep} {seed} {flash_attn} (1/0).
An argument that is exactly ``{fa}`` or ``{rtr}`` becomes ``-fa`` / ``-rtr`` when
the setting is on and disappears when off (llama-sweep-bench's bare switches).
Output (stdout and stderr: ik prints its table on stderr) is parsed with
``orchestrator.importers.parse_sweep_bench_text``, the parser of ``numasweep import``.
"""
from __future__ import annotations

import string

from orchestrator.errors import ImportFormatError
from orchestrator.jobs import Job

PLACEHOLDERS = ("model", "c", "ub", "tg", "threads", "threads_batch", "type_k", "type_v", "k_repack",
                "nrep", "seed", "flash_attn")
SWITCHES = {"{fa}": "flash_attn", "{rtr}": "rtr"}


def check_template(argv: list[str]) -> None:
    """ValueError naming the bad placeholder; run at spec validation."""
    for arg in argv:
        if arg in SWITCHES:
            continue
        for _, field, _, _ in string.Formatter().parse(arg):
            if field is not None and field not in PLACEHOLDERS:
                raise ValueError(f"unknown placeholder {{{field}}} in {arg!r} "
                                 f"(allowed: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}, {{fa}}, {{rtr}})")


def expand(argv: tuple[str, ...], job: Job) -> list[str]:
    s = job.settings
    values = dict(model=job.model, c=s.n_ctx, ub=s.ubatch, tg=s.tg, threads=job.threads,
                  threads_batch=job.threads_batch, type_k=s.type_k, type_v=s.type_v, k_repack=s.k_repack,
                  nrep=job.repetitions, seed=job.seed, flash_attn=int(s.flash_attn))
    out = []
    for arg in argv:
        if arg in SWITCHES:
            if getattr(s, SWITCHES[arg]):
                out.append("-" + arg.strip("{}"))
            continue
        out.append(arg.format(**values))
    return out


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
        return expand(job.backend.argv, job)

    def row_parser(self):
        return _TableParser()
