"""`numasweep` command line: a thin shim over plain functions.

Each lane owns one module that exposes ``register(subparsers)``; every
sub-command sets ``func(args) -> int``. User errors (bad file, bad flag, bad
spec) are printed as one line and exit with status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that register sub-commands, in help order.
_COMMAND_MODULES = (
    "engine.cli",
    "orchestrator.cli_host",
    "orchestrator.cli_run",
    "orchestrator.cli_fleet",
    "orchestrator.cli_store",
)


def _user_errors() -> tuple[type[BaseException], ...]:
    from engine.errors import EngineError

    errors: list[type[BaseException]] = [EngineError]
    for name in ("hostprofiles.errors", "orchestrator.errors"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        errors.extend(getattr(mod, "USER_ERRORS", ()))
    return tuple(errors)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numasweep",
        description="NUMA-aware llama-sweep-bench: pinned CPU LLM benchmarks, stored and compared.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        print(f"numasweep {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("numasweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
