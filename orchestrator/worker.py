"""The pinned worker: runs one slot's jobs as pinned child processes, row by row.

A plain class (Ray wraps it at the edge, see ray_backend). For each job it starts
the backend's argv under the ``orchestrator.pin`` launcher, streams the child's
rows as they are printed, and attaches to every row what /proc says the child
really got (affinity of every thread, memory policy) and how much CPU time *other*
processes used on the slot's CPUs while the row was measured.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

from engine.noise import NoiseMeter, cpu_busy_ticks  # noqa: F401 - cpu_busy_ticks re-exported (tests)
from engine.options import BY_NAME, canonical_name
from orchestrator import backends, pin
from orchestrator.errors import NumasweepError
from orchestrator.builds import BuildError, identity_of
from orchestrator.jobs import Job, JobFailed, SlotConfig, WorkerLost
from orchestrator.model_identity import local_model_path
from orchestrator.point import normalize_settings


def echo_mismatch(row: dict, asked: dict) -> str | None:
    """Where a row's echo of its engine settings disagrees with what the job asked for
    (settings the build was not told, None in ``asked``, are not compared)."""
    try:
        echo = normalize_settings({k: v for k, v in row.items() if canonical_name(k) in BY_NAME and k != "tg"})
    except NumasweepError as exc:
        return str(exc)
    bad = [f"{k}={echo[k]!r} (asked {asked[k]!r})" for k in echo
           if asked.get(k) is not None and echo[k] != asked[k]]
    return ", ".join(bad) or None


_ERROR_WORDS = ("error", "failed", "invalid", "cannot", "unable", "not supported", "refused")


class OutputTail:
    """The last lines a child printed, and its first error-like line: the line that says why it
    failed (ik prints its whole usage text after `error: invalid parameter ...`)."""

    def __init__(self, keep: int = 20) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.first_error: str | None = None

    def add(self, line: str) -> None:
        text = line.strip()
        if not text:
            return
        self.lines.append(text)
        if self.first_error is None and any(w in text.lower() for w in _ERROR_WORDS):
            self.first_error = text[:300]

    def reason(self) -> str:
        return self.first_error or (self.lines[-1][:300] if self.lines else "")


def ensure_model(path: str, shape: str | None, seed: int = 0) -> None:
    """Generate a synthetic model on this host if it is not there yet (atomically)."""
    if shape is None or Path(path).is_file():
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    argv = [sys.executable, "-m", "engine", "make-model", "--shape", shape, "--seed", str(seed), "-o", str(tmp)]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise JobFailed(f"make-model {shape} failed: {res.stderr.strip()[-300:]}")
    os.replace(tmp, out)


class SlotWorker:
    def __init__(self, slot: SlotConfig) -> None:
        self.slot = slot
        self.proc: subprocess.Popen | None = None

    def run(self, job: Job) -> Iterator[dict]:
        """Yield one event per measured row: {row, verified_cpus, verified_mems, noise, pid, build_identity}."""
        if job.build.kind != "replay":
            # A synthetic model lives in this host's own directory when it has one (model_identity).
            local = local_model_path(job.model, job.model_shape, job.model_seed)
            ensure_model(local, job.model_shape, job.model_seed)
            job = dataclasses.replace(job, model=local)
        backend = backends.get(job.build.kind)
        slot = self.slot
        if slot.simulated:  # a simulated 128-core slot runs on the few real CPUs it is mapped to
            s = job.settings
            job = dataclasses.replace(job, settings=s.with_values(threads=min(s["threads"], slot.threads),
                                                                  threads_batch=min(s["threads_batch"], slot.threads)))
        try:
            identity = identity_of(job.build)
        except BuildError as exc:
            raise JobFailed(f"slot {slot.name}: {exc}") from None
        asked = job.point_settings()  # what this process is told (simulated: the real thread counts)
        argv = pin.launcher_argv(slot.cpus, slot.mem_policy, slot.mem_nodes,
                                 max(job.threads, job.threads_batch), backend.argv(job))
        proc = self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if backend.merge_stderr else subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, bufsize=1)
        tail = OutputTail()
        drain = None
        if proc.stderr is not None:
            drain = threading.Thread(target=lambda: [tail.add(ln) for ln in proc.stderr], daemon=True)
            drain.start()
        parse = backend.row_parser()
        n_rows, mems = 0, None
        try:
            meter = NoiseMeter(slot.cpus, proc.pid)
            for line in proc.stdout:
                if backend.merge_stderr:
                    tail.add(line)
                for row in parse(line):
                    bad = echo_mismatch(row, asked)
                    if bad:
                        raise JobFailed(f"slot {slot.name}: build {job.build.name!r} reports {bad}: row refused "
                                        f"(the engine did not run what the job asked for)")
                    noise = meter.lap()
                    try:
                        v = pin.verify(proc.pid)
                        pin.check(v, slot.cpus, slot.mem_policy, slot.mem_nodes)
                    except pin.PinError as exc:
                        raise JobFailed(f"slot {slot.name}: {exc}") from None
                    if v.mem_policy != "unknown":  # else it exited: its last row keeps what was seen alive
                        mems = v.mems
                    n_rows += 1
                    yield {"row": row, "verified_cpus": pin.format_cpulist(v.cpus), "verified_mems": mems,
                           "noise": noise, "pid": proc.pid, "build_identity": identity}
            rc = proc.wait()
        except (FileNotFoundError, ProcessLookupError):  # /proc entry vanished: the child died
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if drain is not None:
                drain.join(timeout=5)
            self.proc = None
        err = [tail.reason()]
        if rc < 0:
            raise WorkerLost(f"slot {slot.name}: engine process {proc.pid} killed by signal {-rc} "
                             f"after {n_rows} rows")
        if rc != 0:
            raise JobFailed(f"slot {slot.name}: engine exited {rc}: {err[0]}")
        want = len(job.expected())
        if n_rows < want:
            raise JobFailed(f"slot {slot.name}: engine printed {n_rows} of {want} rows: {err[0]}")
