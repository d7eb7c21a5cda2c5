"""The numasweep engine, run as a child: ``python -m engine bench ... --output-format jsonl``."""
from __future__ import annotations

import sys

from engine.options import SETTINGS
from orchestrator.backends.jsonl import jsonl_rows
from orchestrator.jobs import Job


def engine_argv(job: Job) -> list[str]:
    """Every schema setting spelled out (nothing left to the engine's defaults), one repetition."""
    values = {**job.settings.as_dict(), "nrep": 1}
    argv = [sys.executable, "-m", "engine", "bench", "-m", job.model, "--output-format", "jsonl"]
    for s in SETTINGS:
        v = values[s.name]
        if s.name == "flash_attn":
            argv += [s.flag, "on" if v else "off"]
        elif s.kind is bool:
            argv += [s.flag] if v else []
        else:
            argv += [s.flag, str(v)]
    return argv


class BuiltinBackend:
    name = "builtin"
    merge_stderr = False  # stderr carries the human header and error messages only

    def argv(self, job: Job) -> list[str]:
        return engine_argv(job)

    def row_parser(self):
        return jsonl_rows
