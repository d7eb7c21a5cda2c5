"""`numasweep import / export / runs / report` through their argparse front ends."""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import pytest

from orchestrator import cli_store
from orchestrator.errors import USER_ERRORS
from orchestrator.export import export_text
from orchestrator.store import Store

FIX = Path(__file__).parent / "fixtures"


def run_cli(argv: list[str]) -> int:
    """What orchestrator.cli.main does for these commands: one-line error, exit 2."""
    parser = argparse.ArgumentParser(prog="numasweep")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_store.register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"numasweep {args.command}: error: {exc}")
        return 2


def test_import_runs_export_report(tmp_path, capsys):
    db = str(tmp_path / "s" / "n.db")
    assert run_cli(["import", str(FIX / "ik-sweep-bench-xeon6980p-q8_0-32k.log"), str(FIX / "llama-bench-cpu.jsonl"),
                    "--label", "seed", "--store", db]) == 0
    out = capsys.readouterr().out
    assert "run 1 (ik-sweep-bench), 64 points" in out and "run 2 (llama-bench), 12 points" in out
    assert run_cli(["import", str(FIX / "llama-bench-cpu.jsonl"), "--store", db]) == 0
    assert "already imported as run 2" in capsys.readouterr().out
    assert run_cli(["runs", "--store", db]) == 0
    listing = capsys.readouterr().out
    assert "ik-sweep-bench" in listing and "seed" in listing and "64" in listing

    assert run_cli(["export", "--format", "jsonl", "--run", "1", "--store", db]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 64
    assert {"n_kv", "pp", "tg", "t_pp", "speed_pp", "t_tg", "speed_tg", "run_id", "label", "host", "settings"} <= set(rows[0])
    assert rows[0]["settings"]["threads"] == 88 and rows[0]["label"] == "seed"

    out_csv = tmp_path / "all.csv"
    assert run_cli(["export", "--format", "csv", "--store", db, "-o", str(out_csv)]) == 0
    table = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(table) == 76 and json.loads(table[0]["settings"])["c"] == 32768

    assert run_cli(["export", "--format", "md", "--run", "2", "--store", db]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| run | label |") and md.count("\n") == 14

    assert run_cli(["report", "1", "-o", str(tmp_path / "rep"), "--store", db]) == 0
    printed = capsys.readouterr().out
    assert "report.html" in printed and (tmp_path / "rep" / "report.html").exists()


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    db = str(tmp_path / "n.db")
    assert run_cli(["runs", "--store", db]) == 2
    assert "no results store here" in capsys.readouterr().out
    bad = tmp_path / "notes.txt"
    bad.write_text("nothing to see\n")
    assert run_cli(["import", str(bad), "--store", db]) == 2
    msg = capsys.readouterr().out
    assert msg.count("\n") == 1 and "notes.txt: unrecognised format" in msg
    assert run_cli(["import", str(FIX / "llama-bench-cpu.md"), "--host-profile", "no-such-host", "--store", db]) == 2
    assert "no-such-host" in capsys.readouterr().out
    assert run_cli(["export", "--run", "7", "--store", db]) == 2
    assert "no run 7" in capsys.readouterr().out
    assert run_cli(["report", "3", "--store", db, "-o", str(tmp_path / "r")]) == 2


def test_import_with_saved_host_profile(tmp_path):
    with Store.open(tmp_path / "n.db") as store:
        assert run_cli(["import", str(FIX / "llama-bench-cpu.csv"), "--host-profile", "ryzen9-7950x",
                        "--store", str(store.path)]) == 0
        (host,) = store.hosts()
        assert host["name"] == "ryzen9-7950x" and host["profile"]["derived"]["cores"] == 16
        assert {p["host_id"] for p in store.points()} == {host["id"]}
        assert "ryzen9-7950x" in export_text(store, "md")
