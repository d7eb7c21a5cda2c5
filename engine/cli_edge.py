"""The one error edge of every command line (numasweep, python -m engine, python -m orchestrator.pin).

Exit status, the same for every command:

- 0: ok.
- 1: it ran but the result is not ok (the command says so: a partial or failed
  run, a regression found by a gate), or its output pipe was closed early.
- 2: bad input or usage. argparse prints its usage line and ``PROG: error: ...``;
  our own checks print ``PROG CMD: error: <file or key>: <what>``, one line.
- 3: internal error (a bug): one line naming the exception and the file the
  traceback was written to; ``--debug`` (or ``NUMASWEEP_DEBUG=1``) prints it.
- 130: interrupted (Ctrl-C).

Lives in the engine because the engine has a command line of its own and must
not import the orchestrator; the orchestrator imports it from here.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import traceback
from typing import Callable, Sequence

EXIT_OK, EXIT_NOT_OK, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEBUG_ENV = "NUMASWEEP_DEBUG"


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of an internal error (exit 3); also {DEBUG_ENV}=1")


MAX_MESSAGE = 2000  # characters: a message quoting a huge bad value stays readable
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def one_line(text: str) -> str:
    """Messages quote input files: no line breaks, no terminal control characters, bounded length."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", " | ".join(text.strip().splitlines()))
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def user_message(exc: BaseException) -> str | None:
    """The one-line text of a bad-input error that is not ours: a path the OS refused."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return None


def command_name(prog: str, args: argparse.Namespace | None) -> str:
    """``numasweep host check`` from the parsed sub-command attributes."""
    if args is None:
        return prog
    parts = [getattr(args, "command", None)] + [v for k, v in sorted(vars(args).items())
                                                 if k.endswith("_command") and isinstance(v, str)]
    return " ".join([prog] + [p for p in parts if p])


def internal_error(name: str, exc: BaseException, debug: bool) -> int:
    """Print one line (and with ``debug`` the traceback first); write the traceback to a file."""
    text = "".join(traceback.format_exception(exc))
    where = None
    try:
        fd, where = tempfile.mkstemp(prefix=re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + "-", suffix=".traceback")
        with os.fdopen(fd, "w") as fh:
            fh.write(f"argv: {sys.argv!r}\npid: {os.getpid()}\n\n{text}")
    except OSError:
        where = None
    if debug:
        print(text, end="", file=sys.stderr)
    first = one_line((str(exc).strip().splitlines() or [""])[0][:300])
    saved = f"traceback in {where}" if where else "traceback could not be saved"
    hint = "" if debug else f"; --debug or {DEBUG_ENV}=1 prints it"
    print(f"{name}: internal error: {type(exc).__name__}: {first} ({saved}{hint})", file=sys.stderr, flush=True)
    return EXIT_INTERNAL


def _quiet_broken_pipe() -> int:
    # The reader went away (`numasweep export | head`): say nothing, and keep the
    # interpreter from complaining when it flushes stdout at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_NOT_OK


def run(prog: str, parser: argparse.ArgumentParser | Callable[[], argparse.ArgumentParser],
        argv: Sequence[str] | None, user_errors: tuple[type[BaseException], ...]) -> int:
    """Build the parser (or take it), parse argv and call ``args.func(args) -> int`` behind the edge."""
    args = None
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in (sys.argv if argv is None else argv)
    try:
        if not isinstance(parser, argparse.ArgumentParser):
            parser = parser()
        args = parser.parse_args(argv)
        debug = debug or bool(getattr(args, "debug", False))
        func: Callable[[argparse.Namespace], int] = args.func
        rc = int(func(args) or 0)
        sys.stdout.flush()
        return rc
    except SystemExit:
        raise  # argparse's usage errors (2) and --help (0)
    except KeyboardInterrupt:
        print(f"{command_name(prog, args)}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except user_errors as exc:
        print(f"{command_name(prog, args)}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the edge: everything else is a bug, reported once
        msg = user_message(exc)
        if msg is not None:
            print(f"{command_name(prog, args)}: error: {one_line(msg)}", file=sys.stderr)
            return EXIT_USAGE
        return internal_error(command_name(prog, args), exc, debug)
