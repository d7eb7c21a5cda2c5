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
import time
from pathlib import Path
from typing import Iterator

from orchestrator import backends, pin
from orchestrator.jobs import Job, JobFailed, SlotConfig, WorkerLost
from orchestrator.model_identity import local_model_path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_busy_ticks(cpus, proc: str = "/proc") -> int:
    """Busy ticks (user+nice+system+irq+softirq+steal) summed over ``cpus``, from /proc/stat."""
    want = {f"cpu{c}" for c in cpus}
    total = 0
    for line in Path(proc, "stat").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in want:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, parts[1:9])
            total += user + nice + system + irq + softirq + steal
    return total


def process_ticks(pid: int, proc: str = "/proc") -> int:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    text = Path(proc, str(pid), "stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


class NoiseMeter:
    """Fraction of the slot's CPU capacity used by other processes between two marks."""

    def __init__(self, cpus, pid: int) -> None:
        self.cpus, self.pid = tuple(cpus), pid
        self._mark = self._sample()

    def _sample(self) -> tuple[float, int, int]:
        return time.monotonic(), cpu_busy_ticks(self.cpus), process_ticks(self.pid)

    def lap(self) -> float:
        now = self._sample()
        (t0, busy0, own0), (t1, busy1, own1) = self._mark, now
        self._mark = now
        capacity = (t1 - t0) * _CLK_TCK * len(self.cpus)
        if capacity <= 0:
            return 0.0
        return round(min(1.0, max(0.0, (busy1 - busy0 - (own1 - own0)) / capacity)), 4)


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
        """Yield one event per measured row: {row, verified_cpus, verified_mems, noise, pid}."""
        if job.backend.kind != "replay":
            # A synthetic model lives in this host's own directory when it has one (model_identity).
            local = local_model_path(job.model, job.model_shape, job.model_seed)
            ensure_model(local, job.model_shape, job.model_seed)
            job = dataclasses.replace(job, model=local)
        backend = backends.get(job.backend.kind)
        slot = self.slot
        if slot.simulated:  # a simulated 128-core slot runs on the few real CPUs it is mapped to
            job = dataclasses.replace(job, threads=min(job.threads, slot.threads),
                                      threads_batch=min(job.threads_batch, slot.threads))
        argv = pin.launcher_argv(slot.cpus, slot.mem_policy, slot.mem_nodes,
                                 max(job.threads, job.threads_batch), backend.argv(job))
        proc = self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if backend.merge_stderr else subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, bufsize=1)
        tail: collections.deque[str] = collections.deque(maxlen=20)
        drain = None
        if proc.stderr is not None:
            drain = threading.Thread(target=lambda: tail.extend(proc.stderr), daemon=True)
            drain.start()
        parse = backend.row_parser()
        n_rows, mems = 0, None
        try:
            meter = NoiseMeter(slot.cpus, proc.pid)
            for line in proc.stdout:
                if backend.merge_stderr:
                    tail.append(line)
                for row in parse(line):
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
                           "noise": noise, "pid": proc.pid}
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
        err = "".join(tail).strip().splitlines()[-1:] or [""]
        if rc < 0:
            raise WorkerLost(f"slot {slot.name}: engine process {proc.pid} killed by signal {-rc} "
                             f"after {n_rows} rows")
        if rc != 0:
            raise JobFailed(f"slot {slot.name}: engine exited {rc}: {err[0]}")
        want = len(job.expected())
        if n_rows < want:
            raise JobFailed(f"slot {slot.name}: engine printed {n_rows} of {want} rows: {err[0]}")
