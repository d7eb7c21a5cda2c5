"""numasweep's own commands print no Ray token-auth WARNING, and keep Ray's default auth (a token)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_run_on_embedded_ray_prints_no_auth_warning(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(HOME=str(tmp_path / "home"), RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    (tmp_path / "spec.toml").write_text("[sweep]\nc = 512\nub = 256\ntg = 8\n[backend]\nkind = \"replay\"\n")
    res = subprocess.run([sys.executable, "-m", "orchestrator", "run", "spec.toml", "--no-report"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Token authentication" not in res.stdout + res.stderr and "WARNING" not in res.stderr, res.stderr
    assert (tmp_path / "home" / ".ray" / "auth_token").is_file()   # Ray's default stands: token auth is on
    assert "[2/2]" in res.stderr
    status = subprocess.run([sys.executable, "-m", "orchestrator", "status", "--address", "http://127.0.0.1:9"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 2 and "no Ray job server" in status.stderr
    assert "Token authentication" not in status.stderr
