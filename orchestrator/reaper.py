"""Nothing an embedded Ray started outlives its coordinator, not even after kill -9.

Ray starts its GCS, raylet, monitors and dashboard as children of the process that
calls ``ray.init`` and ties them to it (parent-death signal), but the raylet's own
children, ``DashboardAgent`` and ``RuntimeEnvAgent``, notice the raylet's death only
by polling and then block for minutes reporting it to the dead GCS; their titles and
environments are rewritten (setproctitle), so nothing names them afterwards. Hence:

- ``guard(temp_dir)`` (called by ``ray_backend.start_local`` before ``ray.init``)
  records the owner (pid and start time) in ``temp_dir/numasweep-owner.json`` and
  starts a watchdog, ``python -m orchestrator.reaper``, in its own session. Its
  stdin is a pipe that only the coordinator holds open.
- While the coordinator lives, the watchdog records this Ray's process tree every
  few seconds: the coordinator's children whose command line names the temp dir
  (GCS, raylet, monitors, dashboard) and everything below them, by pid and start
  time. ``Guard.scan()`` asks for a snapshot at once (after ``ray.init``).
- When the pipe closes (``Guard.close()`` at shutdown, or the kernel closing it when
  the coordinator dies), the watchdog SIGKILLs every recorded process that still
  runs with the same start time, everything below them, and any process of the
  coordinator's session whose command line names the temp dir; then it removes
  the temp dir (when it was ours).
- ``clean_stale()`` at the next start removes ``nsw-ray-*`` dirs whose owner and
  watchdog are both gone (a watchdog killed too), killing what still names them.

Reads /proc only (Linux); imports neither ray nor numba, so the watchdog starts in
~50 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

OWNER_FILE = "numasweep-owner.json"
PREFIX = "nsw-ray-"
POLL_S = 2.0          # snapshot period while the owner lives
CLOSE_WAIT_S = 15.0   # Guard.close() waits this long for the watchdog's cleanup


# -- /proc ---------------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    start: int   # clock ticks since boot: (pid, start) names one process, whatever pid reuse does
    zombie: bool


def proc_stat(pid: int) -> Proc | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return Proc(pid, int(rest[1]), int(rest[3]), int(rest[19]), rest[0] in ("Z", "X"))


def processes() -> dict[int, Proc]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (p := proc_stat(int(name))) is not None:
            out[p.pid] = p
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def alive(pid: int, start: int) -> bool:
    p = proc_stat(pid)
    return p is not None and p.start == start and not p.zombie


def descendants(roots: set[int], procs: dict[int, Proc]) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += children.get(pid, [])
    return out


def ray_tree(owner: int, temp_dir: str) -> dict[int, int]:
    """{pid: start} of the owner's children that name temp_dir, and all below them."""
    procs = processes()
    roots = {p.pid for p in procs.values() if p.ppid == owner and temp_dir in cmdline(p.pid)}
    return {pid: procs[pid].start for pid in descendants(roots, procs) if pid in procs}


# -- the watchdog --------------------------------------------------------------
def reap(known: dict[int, int], temp_dir: str, sid: int | None, spare: set[int]) -> int:
    """SIGKILL what is left of one Ray; returns how many processes were killed."""
    killed = 0
    for _ in range(20):
        procs = processes()
        victims = {pid for pid, start in known.items() if pid in procs and procs[pid].start == start}
        if sid is not None:
            victims |= {p.pid for p in procs.values() if p.sid == sid and temp_dir in cmdline(p.pid)}
        victims = {pid for pid in descendants(victims, procs) if not procs[pid].zombie} - spare
        if not victims:
            break
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.1)
    return killed


def watch(temp_dir: str, owner: int, owner_start: int, remove: bool) -> int:
    sid = proc_stat(owner).sid if alive(owner, owner_start) else None
    known: dict[int, int] = {}
    fd = sys.stdin.fileno()
    while alive(owner, owner_start):
        ready, _, _ = select.select([fd], [], [], POLL_S)
        known.update(ray_tree(owner, temp_dir))
        if ready and not os.read(fd, 4096):
            break  # the owner closed the pipe (shutdown) or died
    reap(known, temp_dir, sid, spare={os.getpid(), owner})
    if remove:
        for _ in range(3):  # a dying process may still write its last log line
            shutil.rmtree(temp_dir, ignore_errors=True)
            if not os.path.exists(temp_dir):
                break
            time.sleep(0.2)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.reaper")
    p.add_argument("temp_dir")
    p.add_argument("owner", type=int)
    p.add_argument("owner_start", type=int)
    p.add_argument("--remove", action="store_true", help="remove temp_dir at the end")
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return watch(a.temp_dir, a.owner, a.owner_start, a.remove)


# -- the coordinator's side ----------------------------------------------------
class Guard:
    """The coordinator's end of one watchdog."""

    def __init__(self, proc: subprocess.Popen, temp_dir: str):
        self.proc, self.temp_dir = proc, temp_dir

    @property
    def pid(self) -> int:
        return self.proc.pid

    def scan(self) -> None:
        """Snapshot the process tree now (call after ray.init: the agents exist)."""
        try:
            self.proc.stdin.write(b"scan\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the watchdog is gone; shutdown() still removes what it can

    def close(self) -> None:
        """Have the watchdog kill what is left of this Ray (and remove its dir); wait for it."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            pass


def guard(temp_dir: str, *, remove: bool) -> Guard | None:
    """Start the watchdog of the Ray that is about to start with ``temp_dir`` (None without /proc)."""
    me = proc_stat(os.getpid())
    if me is None:
        return None
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.reaper", temp_dir, str(os.getpid()), str(me.start)]
        + (["--remove"] if remove else []),
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)
    owner = {"pid": os.getpid(), "start": me.start, "sid": me.sid, "reaper_pid": proc.pid,
             "reaper_start": _start_of(proc.pid)}
    Path(temp_dir, OWNER_FILE).write_text(json.dumps(owner))
    return Guard(proc, temp_dir)


def _start_of(pid: int) -> int | None:
    p = proc_stat(pid)
    return None if p is None else p.start


def clean_stale(root: str | None = None) -> list[str]:
    """Remove ``nsw-ray-*`` dirs under root (default: the temp dir) whose owner and watchdog are gone."""
    root = root or tempfile.gettempdir()
    removed = []
    try:
        names = [n for n in os.listdir(root) if n.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        d = os.path.join(root, name)
        try:
            owner = json.loads(Path(d, OWNER_FILE).read_text())
            sid = int(owner["sid"])
            pids = [(int(owner["pid"]), int(owner["start"]))]
            if owner.get("reaper_start") is not None:
                pids.append((int(owner["reaper_pid"]), int(owner["reaper_start"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not one of ours, or being set up: leave it
        if any(alive(pid, start) for pid, start in pids):
            continue
        reap({}, d, sid, spare={os.getpid()})
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


if __name__ == "__main__":
    sys.exit(main())
