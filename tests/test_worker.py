"""The pinned slot worker with real child processes: replay and external backends, faults, noise."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orchestrator.builds import BuildSpec
from orchestrator.jobs import Job, JobFailed, SlotConfig, WorkerLost
from orchestrator.spec import SweepSpec
from orchestrator.worker import NoiseMeter, SlotWorker, cpu_busy_ticks, echo_mismatch

FIXTURES = Path(__file__).parent / "fixtures"
FAKE = str(FIXTURES / "fake_sweep_bench.py")
CPUS = sorted(os.sched_getaffinity(0))


def job(build: BuildSpec, c=1024, ub=256, rep=0, **sweep) -> Job:
    spec = SweepSpec.from_dict({"sweep": {"c": c, "ub": ub, **sweep}})
    return Job(index=0, host="local", slot="s", model="/models/m.gguf", model_name="m",
               settings=spec.matrix[0].with_values(threads=1, threads_batch=1), build=build, rep=rep)


def slot(cpu: int) -> SlotConfig:
    return SlotConfig(name=f"cpu{cpu}", cpus=(cpu,), mem_policy="bind", mem_nodes=(0,), threads=1,
                      placement={"name": f"cpu{cpu}", "cpus": [cpu]})


@pytest.mark.parametrize("cpu", CPUS[:2])
def test_replay_rows_stream_with_verified_pinning(cpu):
    events = list(SlotWorker(slot(cpu)).run(job(BuildSpec("r", kind="replay", delay_s=0.05))))
    assert [e["row"]["n_kv"] for e in events] == [0, 256, 512, 768]
    assert {e["build_identity"]["kind"] for e in events} == {"replay"}
    assert {e["verified_cpus"] for e in events} == {str(cpu)}
    assert {e["verified_mems"] for e in events} == {"bind:0"}
    assert all(0.0 <= e["noise"] <= 1.0 for e in events)


def test_replay_from_recorded_log_keeps_its_timings():
    log = str(FIXTURES / "ik-sweep-bench-xeon6980p-q8_0-32k.log")
    events = list(SlotWorker(slot(CPUS[0])).run(job(BuildSpec("r", kind="replay", replay=log), c=1024, ub=512,
                                                     tg=128)))
    assert [e["row"]["speed_pp"] for e in events] == [107.001, 106.889]  # the log's N_KV 0 and 512 rows
    assert [e["row"]["speed_tg"] for e in events] == [10.457, 9.993]


def test_external_binary_table_on_stderr_parsed_by_importer():
    argv = (sys.executable, FAKE, "-m", "{model}", "-c", "{c}", "-ub", "{ub}", "-n", "{tg}", "-t", "{threads}",
            "-tb", "{threads_batch}", "-ctk", "{type_k}", "{fa}")
    events = list(SlotWorker(slot(CPUS[-1])).run(job(BuildSpec("x", kind="external", argv=argv), tg=32)))
    rows = [e["row"] for e in events]
    assert [r["n_kv"] for r in rows] == [0, 256, 512, 768]
    assert all(r["pp"] == 256 and r["tg"] == 32 and r["n_threads"] == 1 for r in rows)
    assert rows[0]["flash_attn"] in (1, True) and rows[0]["speed_pp"] == 500.0
    assert {e["verified_cpus"] for e in events} == {str(CPUS[-1])}
    ident = events[0]["build_identity"]
    assert ident["kind"] == "external" and ident["path"] == str(Path(sys.executable).resolve())
    assert ident["size"] > 0 and len(ident["sha256"]) == 64


def test_fa_syntax_renders_for_old_and_new_builds():
    new = (sys.executable, FAKE, "-m", "{model}", "-c", "{c}", "-ub", "{ub}", "{fa}")
    assert len(list(SlotWorker(slot(CPUS[0])).run(job(BuildSpec("x", kind="external", argv=new), c=512)))) == 2
    old = new + ("--legacy-fa",)
    flag = BuildSpec("x", kind="external", argv=old, fa_syntax="flag")
    assert len(list(SlotWorker(slot(CPUS[0])).run(job(flag, c=512)))) == 2
    # a flag-syntax template sent to today's ik: its first error line is the reason, not the usage text
    with pytest.raises(JobFailed, match="exited 1: error: invalid parameter for argument: -fa$"):
        list(SlotWorker(slot(CPUS[0])).run(job(BuildSpec("x", kind="external", argv=new, fa_syntax="flag"),
                                              c=512)))


def test_a_row_that_disagrees_with_the_job_is_refused():
    # the template passes {ub} but a later literal -ub 128 wins in the binary: it ran another ub
    argv = (sys.executable, FAKE, "-m", "{model}", "-c", "{c}", "-ub", "{ub}", "-ub", "128", "{fa}")
    build = BuildSpec("x", kind="external", argv=argv)
    with pytest.raises(JobFailed, match=r"reports ub=128 \(asked 256\): row refused"):
        list(SlotWorker(slot(CPUS[0])).run(job(build, c=512)))
    assert echo_mismatch({"n_kv_max": 512, "n_threads": 1, "flash_attn": 1}, {"c": 512, "threads": 1,
                                                                             "flash_attn": True}) is None
    assert "threads=2" in echo_mismatch({"n_threads": 2}, {"threads": 1})
    assert echo_mismatch({"n_threads": 2}, {"threads": None}) is None  # not told: not compared


def test_external_refusal_and_early_exit_are_job_failures():
    refuse = (sys.executable, FAKE, "-m", "{model}", "--bogus")
    with pytest.raises(JobFailed, match="exited 2: error: invalid argument: --bogus"):
        list(SlotWorker(slot(CPUS[0])).run(job(BuildSpec("x", kind="external", argv=refuse))))
    dies = (sys.executable, FAKE, "-m", "{model}", "-c", "{c}", "-ub", "{ub}", "--die-after", "2")
    with pytest.raises(JobFailed, match="exited 1"):
        list(SlotWorker(slot(CPUS[0])).run(job(BuildSpec("x", kind="external", argv=dies))))


def test_kill_9_of_engine_process_is_worker_lost_after_streamed_rows():
    w = SlotWorker(slot(CPUS[0]))
    got = []
    with pytest.raises(WorkerLost, match="signal 9 after 2 rows"):
        for ev in w.run(job(BuildSpec("r", kind="replay", delay_s=0.2), c=2048, ub=256)):
            got.append(ev)
            if len(got) == 2:
                os.kill(ev["pid"], signal.SIGKILL)
    assert len(got) == 2


def test_pin_to_unavailable_cpu_fails_before_any_row():
    bad = SlotConfig(name="bad", cpus=(4095,), mem_policy="none", mem_nodes=(), threads=1, placement={})
    with pytest.raises(JobFailed, match="exited 2"):
        list(SlotWorker(bad).run(job(BuildSpec("r", kind="replay"))))


def test_noise_meter_sees_a_competing_process():
    cpu = CPUS[-1]
    me = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    hog = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c",
                            "import time\nt = time.time()\nwhile time.time() - t < 2: pass"])
    try:
        meter = NoiseMeter((cpu,), me.pid)
        threading.Event().wait(1.0)
        assert meter.lap() > 0.5  # the hog had most of the CPU; `me` slept
    finally:
        hog.wait()
        me.kill()
        me.wait()
    assert cpu_busy_ticks((cpu,)) > 0
