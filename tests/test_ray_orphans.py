"""No orphans: nothing the embedded Ray started outlives a coordinator killed with -9, and a
dead coordinator's temp dir is removed (by its watchdog, or else by the next start)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import reaper

ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")


def _tree(root: int) -> dict[int, int]:
    """{pid: start time} of root's descendants (not root)."""
    procs = reaper.processes()
    return {pid: procs[pid].start for pid in reaper.descendants({root}, procs) - {root} if pid in procs}


def _left(snapshot: dict[int, int]) -> list[str]:
    return [f"{pid} {reaper.cmdline(pid)[:80]}" for pid, start in snapshot.items() if reaper.alive(pid, start)]


def _owned_dir(pid: int) -> Path | None:
    for d in Path(os.environ.get("TMPDIR", "/tmp")).glob(f"{reaper.PREFIX}*"):
        try:
            if json.loads((d / reaper.OWNER_FILE).read_text())["pid"] == pid:
                return d
        except (OSError, ValueError, KeyError):
            pass
    return None


@pytest.mark.ray
@pytest.mark.slow
def test_kill_9_of_the_coordinator_leaves_no_ray_process(tmp_path):
    (tmp_path / "spec.toml").write_text("""
[sweep]
c = 4096
ub = 32
tg = 32
[backend]
kind = "replay"
delay_s = 0.2
""")  # 128 rows x 0.2 s: still running when killed
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "spec.toml", "--store", "s.db",
                             "--no-report", "-q"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, n = time.monotonic() + 120, 0
        while time.monotonic() < deadline and n < 3 and proc.poll() is None:
            time.sleep(0.2)
            try:
                with sqlite3.connect(tmp_path / "s.db") as con:
                    n = con.execute("SELECT COUNT(*) FROM points").fetchone()[0]
            except sqlite3.Error:
                pass
        assert n >= 3, f"no rows stored: {proc.stderr.read().decode() if proc.poll() is not None else ''}"
        time.sleep(2.5)  # at least one periodic snapshot after the slot actor started
        snapshot = _tree(proc.pid)
        temp_dir = _owned_dir(proc.pid)
        names = " ".join(reaper.cmdline(p) for p in snapshot)
        assert temp_dir is not None and "DashboardAgent" in names and "raylet" in names, names
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_left(snapshot) or temp_dir.exists()):
        time.sleep(0.2)
    left = _left(snapshot)
    for item in left:  # don't leave them to the next test
        os.kill(int(item.split()[0]), signal.SIGKILL)
    assert not left, f"still running 10 s after kill -9 of the coordinator: {left}"
    assert not temp_dir.exists(), f"{temp_dir} was not removed"


def _dead_pid() -> tuple[int, int]:
    p = subprocess.Popen(["sleep", "0"])
    start = reaper.proc_stat(p.pid).start
    p.wait()
    return p.pid, start


def test_stale_dir_of_a_dead_owner_is_removed_with_its_leftovers(tmp_path):
    dead_pid, dead_start = _dead_pid()
    me = reaper.proc_stat(os.getpid())
    stale = tmp_path / f"{reaper.PREFIX}stale"
    (stale / "session_x").mkdir(parents=True)
    (stale / reaper.OWNER_FILE).write_text(json.dumps(
        {"pid": dead_pid, "start": dead_start, "sid": me.sid, "reaper_pid": dead_pid, "reaper_start": dead_start}))
    # A leftover of that Ray: it names the dir on its command line (like raylet --session_dir=...).
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(stale / "session_x")])
    live = tmp_path / f"{reaper.PREFIX}live"  # its owner (this process) runs: keep
    live.mkdir()
    (live / reaper.OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start": me.start, "sid": me.sid}))
    foreign = tmp_path / f"{reaper.PREFIX}foreign"  # no owner file: not ours to judge
    foreign.mkdir()
    try:
        assert reaper.clean_stale(str(tmp_path)) == [str(stale)]
        assert leftover.wait(timeout=5) == -signal.SIGKILL
    finally:
        if leftover.poll() is None:
            leftover.kill()
    assert not stale.exists() and live.exists() and foreign.exists()


def test_watchdog_reaps_the_tree_when_its_owner_dies(tmp_path):
    """The mechanism without Ray: an owner that starts a child naming the dir, whose own child
    has a rewritten command line (like Ray's agents), then dies by SIGKILL."""
    temp_dir = tmp_path / f"{reaper.PREFIX}t"
    temp_dir.mkdir()
    owner_code = f"""
import subprocess, sys, time
from orchestrator import reaper
g = reaper.guard({str(temp_dir)!r}, remove=True)
# "raylet": names the dir; its child "agent" does not.
subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
    "time.sleep(120)", {str(temp_dir / 'session')!r}])
time.sleep(0.5)
g.scan()
print("ready", flush=True)
time.sleep(120)
"""
    owner = subprocess.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        snapshot = _tree(owner.pid)
        assert len(snapshot) == 3  # watchdog, "raylet", "agent"
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_left(snapshot) or temp_dir.exists()):
        time.sleep(0.1)
    left = _left(snapshot)
    for item in left:
        os.kill(int(item.split()[0]), signal.SIGKILL)
    assert not left and not temp_dir.exists()
