"""Processes a simulated fleet started: alive or not, found by their environment marker, killed.

Every process of a fleet's node inherits the marker the fleet put in its environment, so
they are found again whatever process group or session they moved to; nothing else carries
it. Only /proc is read; signals go to these PIDs alone.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (reaped by nobody yet) is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting for their reaper do not)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def kill(pid: int) -> int:
    try:
        os.kill(pid, signal.SIGKILL)
        return 1
    except (ProcessLookupError, PermissionError):
        return 0


def marked_pids(key: str, value: str) -> list[int]:
    """PIDs whose environment has ``key=value`` (the fleet's own markers; never anyone else's)."""
    want = f"{key}={value}".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if want in env.split(b"\0"):
            out.append(int(entry.name))
    return out


def kill_marked(key: str, value: str) -> int:
    return sum(kill(pid) for pid in marked_pids(key, value))
