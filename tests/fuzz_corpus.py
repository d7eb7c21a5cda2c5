"""A corpus of bad inputs and the harness that runs each through the real CLI.

Each ``Case`` writes its input files into its own directory (``build``) and says what
to run (``python -m orchestrator ARGV`` in that directory) and what the last stderr
line must name. ``run_case`` runs it in a subprocess in its own session, with an
address-space limit, and measures exit status, stderr, wall time and peak RSS
(``wait4``); ``snapshot`` records every file under the case directory (inputs and
store) so the test can assert that a rejected input changed nothing.

Cases live in ``fuzz_gguf`` (corrupted GGUF models of every architecture),
``fuzz_specs`` (bad sweep specs) and ``fuzz_imports`` (bad files for ``import``).
"""
from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

AS_LIMIT = 2 << 30        # address space of a non-Ray case: numasweep bench needs < 1 GiB
RSS_LIMIT_KIB = 1 << 20   # peak RSS a case may reach (1 GiB)
TIME_BOUND_S = 30.0       # a rejected input must be rejected within this (a loaded 2-core machine)
KILL_AFTER_S = TIME_BOUND_S + 5  # then the harness kills it (a FIFO blocking open(), an endless loop)
RAY_KILL_AFTER_S = 180.0
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
       "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class Built:
    """What to run for one case, from its directory."""
    argv: tuple[str, ...]          # after `python -m orchestrator`
    needles: tuple[str, ...]       # each must appear in the last stderr line (a file, a key)
    ray: bool = False              # starts the embedded Ray: no address-space limit, longer kill timer


@dataclass(frozen=True)
class Ctx:
    """Shared inputs: one valid model per architecture, a store with one run, the fixtures."""
    models: dict[str, Path]        # arch -> valid synthetic GGUF (llama, qwen2, gemma3, qwen2moe, deepseek2)
    seed_store: Path               # a results store holding one imported run
    fixtures: Path


@dataclass(frozen=True)
class Case:
    kind: str                                  # gguf | spec | import
    name: str
    build: Callable[[Ctx, Path], Built] = field(repr=False, compare=False)
    xfail: str | None = None                   # "needs issue 15 item N": fails until that lands

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.name}"


@dataclass(frozen=True)
class Outcome:
    rc: int | None                 # None: killed after the kill timer
    stderr: str
    wall_s: float
    maxrss_kib: int
    before: dict[str, str]         # relative path -> sha256, every file under the case dir
    after: dict[str, str]

    @property
    def last_line(self) -> str:
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir() or not p.exists():
            out[str(p.relative_to(root))] = "dir" if p.is_dir() else "dangling"
        else:
            out[str(p.relative_to(root))] = "special"  # a FIFO: never read it
    return out


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run_case(case: Case, built: Built, case_dir: Path, tmp_dir: Path) -> Outcome:
    """Run one built case through the CLI in a subprocess and measure it."""
    before = snapshot(case_dir)
    env = dict(os.environ, **ENV)
    if not built.ray:  # Ray wants a short temp dir path (its sockets live there)
        env["TMPDIR"] = str(tmp_dir)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", *built.argv], cwd=case_dir, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=None if built.ray else _limit_memory)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(65536), b"")), daemon=True)
    reader.start()
    deadline = t0 + (RAY_KILL_AFTER_S if built.ray else KILL_AFTER_S)
    killed = False
    while True:  # wait4, not Popen.wait: it gives this child's own peak RSS
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline and not killed:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
            killed = True
        time.sleep(0.02)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
    reader.join(timeout=10)
    proc.stderr.close()
    return Outcome(None if killed else proc.returncode, b"".join(chunks).decode("utf-8", "replace"), wall,
                   usage.ru_maxrss, before, snapshot(case_dir))
