"""Real pinning: the launcher pins a child before it starts; /proc says what every thread got."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from orchestrator import pin

CPUS = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 CPUs")

# A child that starts threads, then reports its own view and waits for us to read /proc.
CHILD = """
import json, os, sys, threading, time
ts = [threading.Thread(target=time.sleep, args=(30,), daemon=True) for _ in range(3)]
[t.start() for t in ts]
print(json.dumps({"aff": sorted(os.sched_getaffinity(0)), "env": {k: os.environ.get(k) for k in
      ("OMP_PROC_BIND", "OMP_PLACES", "NUMBA_NUM_THREADS")}}), flush=True)
sys.stdin.readline()
"""


def start(cpus, mem_policy="bind", mem_nodes=(0,), threads=1, code=CHILD):
    argv = pin.launcher_argv(cpus, mem_policy, mem_nodes, threads, [sys.executable, "-c", code])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    return proc, json.loads(first) if first else None


def finish(proc):
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.communicate(timeout=10)


@pytest.mark.parametrize("cpu", [0, pytest.param(1, marks=needs_two)])
def test_child_pinned_to_one_cpu_every_thread(cpu):
    proc, seen = start((cpu,))
    try:
        assert seen["aff"] == [cpu]
        assert seen["env"] == {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores", "NUMBA_NUM_THREADS": "1"}
        v = pin.verify(proc.pid)
        assert v.cpus == (cpu,) and v.threads >= 4  # main + 3 threads, all read from /proc/<pid>/task
        assert v.mem_policy == "bind:0" and 0 in v.mems_allowed
        pin.check(v, (cpu,), "bind", (0,))
        # Asked for something else: a mismatch is an error, not a warning.
        other = 1 - cpu if len(CPUS) > 1 else cpu
        if other != cpu:
            with pytest.raises(pin.PinError, match="affinity mismatch"):
                pin.check(v, (other,), "bind", (0,))
        with pytest.raises(pin.PinError, match="memory policy mismatch"):
            pin.check(v, (cpu,), "interleave", (0,))
    finally:
        finish(proc)


@pytest.mark.parametrize("policy, shown", [("interleave", "interleave:0"), ("preferred", "prefer:0"),
                                           ("none", "default")])
def test_memory_policies_visible_in_numa_maps(policy, shown):
    proc, _ = start((CPUS[0],), policy, () if policy == "none" else (0,))
    try:
        v = pin.verify(proc.pid)
        assert v.mem_policy == shown
        assert v.pages_per_node and v.pages_per_node[0][0] == 0
        pin.check(v, (CPUS[0],), policy, () if policy == "none" else (0,))
    finally:
        finish(proc)


@needs_two
def test_numba_pool_sized_from_pinned_mask():
    code = "import numba; print(numba.config.NUMBA_DEFAULT_NUM_THREADS, numba.get_num_threads(), flush=True)"
    argv = pin.launcher_argv((1,), "bind", (0,), 1, [sys.executable, "-c", code])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


def test_launcher_refuses_bad_requests():
    bad_cpu = subprocess.run([sys.executable, "-m", "orchestrator.pin", "--cpus", "4095", "--", "true"],
                             capture_output=True, text=True)
    assert bad_cpu.returncode == 2 and "orchestrator.pin" in bad_cpu.stderr
    bad_list = subprocess.run([sys.executable, "-m", "orchestrator.pin", "--cpus", "0-x", "--", "true"],
                              capture_output=True, text=True)
    assert bad_list.returncode == 2 and "--cpus" in bad_list.stderr
    bad_node = subprocess.run([sys.executable, "-m", "orchestrator.pin", "--cpus", "0", "--mem", "bind:63",
                               "--", "true"], capture_output=True, text=True)
    assert bad_node.returncode == 2 and "set_mempolicy" in bad_node.stderr
    missing = subprocess.run([sys.executable, "-m", "orchestrator.pin", "--cpus", "0", "--", "/no/such/bin"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "/no/such/bin" in missing.stderr  # bad input: exit 2, like every command


def test_verify_gone_process():
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with pytest.raises(pin.PinError, match="gone"):
        pin.verify(int(p.stdout))


@needs_two
def test_thread_subsets_pass_and_escaping_thread_is_caught():
    # One thread narrows itself to CPU 1 (what OMP_PROC_BIND=close does), one widens to 0-1.
    code = """
import os, sys, threading, time
def narrow(): os.sched_setaffinity(0, {1}); time.sleep(30)
threading.Thread(target=narrow, daemon=True).start()
time.sleep(0.2); print("{}", flush=True); sys.stdin.readline()
def widen(): os.sched_setaffinity(0, {0, 1}); time.sleep(30)
threading.Thread(target=widen, daemon=True).start()
time.sleep(0.2); print("{}", flush=True); sys.stdin.readline()
"""
    proc, _ = start((1,), code=code)
    try:
        pin.check(pin.verify(proc.pid), (1,), "bind", (0,))  # narrowed threads are fine
    finally:
        finish(proc)
    proc, _ = start((0, 1), code=code)
    try:
        v = pin.verify(proc.pid)
        assert sorted({c for _, cs in v.thread_cpus for c in cs}) == [0, 1]
        pin.check(v, (0, 1), "bind", (0,))
    finally:
        finish(proc)
    proc, _ = start((1,), code=code)
    try:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.stdout.readline()  # the widening thread now runs
        with pytest.raises(pin.PinError, match="asked CPUs 1, thread .* may run on 0-1"):
            pin.check(pin.verify(proc.pid), (1,), "bind", (0,))
    finally:
        proc.kill()
        proc.wait()
