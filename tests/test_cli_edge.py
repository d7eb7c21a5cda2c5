"""The one error edge: exit 0/1/2/3 (and 130), one line for bad input, a traceback file for bugs."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from engine.cli_edge import add_debug_flag, run
from engine.errors import EngineError


def _parser(func) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tool")
    add_debug_flag(p)
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("go")
    c.set_defaults(func=func)
    return p


def _raise(exc):
    def func(args):
        raise exc
    return func


def test_ok_and_not_ok_pass_through(capsys):
    assert run("tool", _parser(lambda a: 0), ["go"], (EngineError,)) == 0
    assert run("tool", _parser(lambda a: 1), ["go"], (EngineError,)) == 1
    assert run("tool", _parser(lambda a: None), ["go"], (EngineError,)) == 0


def test_user_error_is_one_line_exit_2(capsys):
    rc = run("tool", _parser(_raise(EngineError("m.gguf: not a GGUF file"))), ["go"], (EngineError,))
    err = capsys.readouterr().err
    assert rc == 2 and err == "tool go: error: m.gguf: not a GGUF file\n"


def test_refused_path_is_a_user_error(capsys):
    rc = run("tool", _parser(_raise(FileNotFoundError(2, "No such file or directory", "/no/x.csv"))), ["go"], ())
    assert rc == 2 and capsys.readouterr().err == "tool go: error: /no/x.csv: No such file or directory\n"


def test_usage_error_is_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        run("tool", _parser(lambda a: 0), ["go", "--nope"], ())
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: tool") and "error: unrecognized arguments: --nope" in err


def test_internal_error_is_one_line_and_a_traceback_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("NUMASWEEP_DEBUG", raising=False)
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    rc = run("tool", _parser(_raise(ZeroDivisionError("float division by zero"))), ["go"], (EngineError,))
    err = capsys.readouterr().err
    (saved,) = tmp_path.glob("tool-go-*.traceback")
    assert rc == 3 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("tool go: internal error: ZeroDivisionError: float division by zero (traceback in ")
    assert str(saved) in err and "--debug" in err
    assert "Traceback (most recent call last)" in saved.read_text() and "ZeroDivisionError" in saved.read_text()


def test_debug_prints_the_traceback(capsys):
    rc = run("tool", _parser(_raise(KeyError("k"))), ["--debug", "go"], ())
    err = capsys.readouterr().err
    assert rc == 3 and err.startswith("Traceback (most recent call last)") and "internal error: KeyError" in err


def test_interrupt_and_broken_pipe(capsys):
    assert run("tool", _parser(_raise(KeyboardInterrupt())), ["go"], ()) == 130
    assert capsys.readouterr().err == "tool go: interrupted\n"


def test_numasweep_exit_codes_end_to_end(tmp_path):
    """Through the real console entry: 2 for a path the OS refuses, 3 for a bug, 2 for usage."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("NUMASWEEP_DEBUG", None)

    def ns(*args, **kw):
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120, **kw)

    from orchestrator.store import Store
    Store.open(tmp_path / "s.db").close()
    r = ns("export", "--store", "s.db", "-o", str(tmp_path / "no" / "dir" / "x.csv"))
    assert r.returncode == 2 and r.stderr.strip() == \
        f"numasweep export: error: {tmp_path / 'no' / 'dir' / 'x.csv'}: No such file or directory"
    r = ns("runs", "--bogus")
    assert r.returncode == 2 and r.stderr.startswith("usage: numasweep") and "Traceback" not in r.stderr
    # A bug on purpose (no input is known to cause one): the engine's own main with a command that fails.
    code = ("import sys, engine.cli as c\n"
            "c.cmd_make_model = lambda args: 1 / 0  # read by register() when main() builds the parser\n"
            "sys.exit(c.main(['make-model', '-o', 'x.gguf']))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 3 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("python -m engine make-model: internal error: ZeroDivisionError")
    assert list(tmp_path.glob("python-m-engine-make-model-*.traceback"))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(env, NUMASWEEP_DEBUG="1"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and r.stderr.startswith("Traceback (most recent call last)")


def test_messages_are_one_printable_bounded_line(capsys):
    bad = EngineError("x.log:3: row is not numeric: |\x1b[2J| \nsecond line " + "v" * 5000)
    assert run("tool", _parser(_raise(bad)), ["go"], (EngineError,)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\\x1b[2J" in err and " | second line" in err
    assert len(err) < 2100 and err.rstrip().endswith("…")
