"""Every example spec says how to run it here, validates, and plans with --dry-run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def test_there_are_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_header_says_how_to_run_it_here(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# How to run here:"), first
    head = " ".join(line for line in path.read_text().splitlines()[:4] if line.startswith("#"))
    assert any(way in head for way in ("directly", "fleet up --simulate", "--dry-run")), head
    assert f"examples/{path.name}" in head  # the exact command, copy-pasteable from the repository root


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    from orchestrator.spec import SweepSpec

    spec = SweepSpec.from_toml(path)
    assert spec.matrix


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_dry_run(path, tmp_path):
    res = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(path), "--dry-run"], cwd=tmp_path,
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip()
    assert not (tmp_path / "numasweep-results").exists()  # a dry run writes nothing
