"""The project's own metadata installs without setuptools warnings (SPDX license string)."""
from __future__ import annotations

import tomllib
from importlib.metadata import metadata
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it():
    assert PYPROJECT["project"]["license"] == "MIT"  # a table here is deprecated (warned on every install)
    assert not any(c.startswith("License ::") for c in PYPROJECT["project"].get("classifiers", []))
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]  # 77 is the first to read SPDX strings
    assert metadata("numasweep")["License-Expression"] == "MIT"


def test_live_progress_dependency_is_declared():
    assert any(d.split(">")[0].split("=")[0].strip() == "rich" for d in PYPROJECT["project"]["dependencies"])
