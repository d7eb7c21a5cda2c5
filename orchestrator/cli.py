"""`numasweep` command line: a thin shim over plain functions.

Each lane owns one module that exposes ``register(subparsers)``; every
sub-command sets ``func(args) -> int``. The error edge and the exit-status
table (0 ok, 1 ran but not ok, 2 bad input or usage, 3 internal error) are
``engine.cli_edge``'s, shared with ``python -m engine`` and
``python -m orchestrator.pin``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from engine.cli_edge import add_debug_flag
from engine.cli_edge import run as run_cli
from engine.errors import EngineError
from hostprofiles.errors import USER_ERRORS as HOST_USER_ERRORS
from orchestrator.errors import USER_ERRORS as ORCHESTRATOR_USER_ERRORS

# Bad input from any lane: printed as one line, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (EngineError, *HOST_USER_ERRORS, *ORCHESTRATOR_USER_ERRORS)

# Modules that register sub-commands, in help order.
_COMMAND_MODULES = (
    "engine.cli",
    "orchestrator.cli_host",
    "orchestrator.cli_run",
    "orchestrator.cli_fleet",
    "orchestrator.cli_store",
    "orchestrator.cli_share",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numasweep",
        description="NUMA-aware llama-sweep-bench: pinned CPU LLM benchmarks, stored and compared.",
    )
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli("numasweep", build_parser, argv, USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
