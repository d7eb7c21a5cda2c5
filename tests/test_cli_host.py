"""`numasweep host ...` end to end through argparse, on saved and fake-sysfs hosts."""
from __future__ import annotations

import argparse
import json

import pytest

from hostprofiles import load_profile, materialize
from hostprofiles.saved import SHIPPED_DIR
from orchestrator import cli_host


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="numasweep")
    sub = parser.add_subparsers(dest="command")
    cli_host.register(sub)
    args = parser.parse_args(argv)
    rc = args.func(args)
    return rc, capsys.readouterr().out


def test_show_profile_human_and_json(capsys):
    rc, out = run(["host", "show", "--profile", "xeon-6980p-2s-snc3", "--profiles-dir", str(SHIPPED_DIR)], capsys)
    assert rc == 0
    assert "6 NUMA node(s) (SNC3)" in out and "die 2: 42 cores, cpus 86-127,342-383" in out
    assert "554" in out and "[thp-mode]" in out
    rc, out = run(["host", "show", "--profile", "ryzen9-7950x", "--profiles-dir", str(SHIPPED_DIR), "--json"],
                  capsys)
    data = json.loads(out)
    assert data["schema_version"] == 1 and data["derived"]["die_groups"] == ["0-7,16-23", "8-15,24-31"]


def test_detect_from_root_and_save_then_list(tmp_path, capsys):
    root = materialize(load_profile("threadripper-pro-5975wx", [SHIPPED_DIR]), tmp_path / "root")
    rc, out = run(["host", "detect", "--root", str(root), "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["simulated"] is True and data["derived"]["numa_mode"] == "NPS1"
    assert len(data["derived"]["die_groups"]) == 8
    saved = tmp_path / "profiles"
    rc, out = run(["host", "save", "genoa", "--root", str(root), "--dir", str(saved), "--note", "lab box"],
                  capsys)
    assert rc == 0 and "saved genoa" in out
    assert load_profile("genoa", [saved]).notes[-1] == "lab box"
    rc, out = run(["host", "list", "--profiles-dir", str(saved), "--json"], capsys)
    assert [r["name"] for r in json.loads(out)] == ["genoa"]
    rc, out = run(["host", "list", "--profiles-dir", str(SHIPPED_DIR)], capsys)
    assert "xeon-6980p-2s-snc-off" in out and "SNC off" in out


def test_plan_prints_numactl_slots(capsys):
    rc, out = run(["host", "plan", "--profile", "xeon-6980p-2s-snc-off", "--profiles-dir", str(SHIPPED_DIR),
                   "--policy", "per-node", "--threads", "88"], capsys)
    assert rc == 0
    assert "numactl --physcpubind=0-87 --membind=0" in out
    assert "numactl --physcpubind=128-215 --membind=1" in out
    rc, out = run(["host", "plan", "--profile", "epyc-9654-2s-nps4", "--profiles-dir", str(SHIPPED_DIR),
                   "--policy", "per-node", "-t", "2", "--json"], capsys)
    assert [s["cpulist"] for s in json.loads(out)][:2] == ["0,12", "3,15"]


def test_check_reports_and_strict_exit(capsys):
    base = ["host", "check", "--profile", "xeon-6980p-2s-snc3", "--profiles-dir", str(SHIPPED_DIR)]
    rc, out = run(base + ["--policy", "per-node", "--smt", "--model-bytes", str(300 << 30)], capsys)
    assert rc == 0 and "[smt-siblings]" in out and "[model-exceeds-node-memory]" in out
    rc, _ = run(base + ["--policy", "per-node", "--smt", "--strict"], capsys)
    assert rc == 1
    rc, out = run(base + ["--json"], capsys)
    assert "thp-mode" in {f["code"] for f in json.loads(out)}


def test_user_errors_are_one_line_exit_2(capsys):
    cli = pytest.importorskip("orchestrator.cli")
    try:
        cli.build_parser()
    except ImportError as exc:  # another lane's command module isn't there yet
        pytest.skip(f"numasweep CLI not assembled yet: {exc}")
    rc = cli.main(["host", "plan", "--profile", "ryzen9-7950x", "--policy", "per-node", "--threads", "99"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "threads=99 is more than slot node0" in err
    rc = cli.main(["host", "show", "--profile", "no-such-host"])
    assert rc == 2 and "no saved host profile 'no-such-host'" in capsys.readouterr().err


def test_cli_catches_profile_errors_as_user_errors():
    from hostprofiles.errors import USER_ERRORS, PlacementError, ProfileError, SchemaError
    from orchestrator.cli import USER_ERRORS as CLI_USER_ERRORS

    assert ProfileError in USER_ERRORS and issubclass(PlacementError, ProfileError)
    assert issubclass(SchemaError, ProfileError) and ProfileError in CLI_USER_ERRORS
