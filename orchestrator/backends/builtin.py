"""The numasweep engine, run as a child: ``python -m engine bench ... --output-format jsonl``."""
from __future__ import annotations

import sys

from orchestrator.backends.jsonl import jsonl_rows
from orchestrator.jobs import Job


def engine_argv(job: Job) -> list[str]:
    s = job.settings
    argv = [sys.executable, "-m", "engine", "bench", "-m", job.model, "-c", str(s.n_ctx),
            "-ub", str(s.ubatch), "-n", str(s.tg), "-t", str(job.threads), "-tb", str(job.threads_batch),
            "-ctk", s.type_k, "-ctv", s.type_v, "--k-repack", s.k_repack,
            "-nrep", str(job.repetitions), "--seed", str(job.seed), "--output-format", "jsonl"]
    if s.flash_attn:
        argv.append("-fa")
    if s.rtr:
        argv.append("-rtr")
    return argv


class BuiltinBackend:
    name = "builtin"
    merge_stderr = False  # stderr carries the human header and error messages only

    def argv(self, job: Job) -> list[str]:
        return engine_argv(job)

    def row_parser(self):
        return jsonl_rows
