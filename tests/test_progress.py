"""Live progress (engine.progress, orchestrator.progress) and bench's noise meter and warnings."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

from engine.bench_watch import BenchWatch, timed_rows
from engine.noise import NOISE_WARN, noise_warning
from engine.progress import EtaModel, ProgressDisplay, format_duration
from engine.sweep import SweepConfig, SweepRow
from orchestrator.progress import ProgressEvent, RunProgress, settings_in_words, varying_keys


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_eta_from_measured_row_times_per_lane():
    clock = Clock()
    eta = EtaModel(clock)
    eta.plan("a", rows=10, jobs=2)           # two jobs of 5 rows
    eta.plan("b", rows=3, jobs=1)
    assert eta.eta() is None                 # nothing measured yet
    eta.job_start("a")
    clock.t = 5.0
    eta.row("a")                             # startup (load + warm-up) 5 s
    clock.t = 7.0
    eta.row("a")
    clock.t = 9.0
    eta.row("a")                             # rows every 2 s
    # lane a: 7 rows x 2 s + 1 job not started x 5 s = 19 s; lane b borrows a's times: 3 x 2 + 5
    assert eta.lane_eta("a") == 19.0
    assert eta.lane_eta("b") == 11.0
    assert eta.eta() == 19.0
    eta.job_start("b")
    clock.t = 10.0                           # b's job is loading: 4 s of its startup remain
    assert eta.lane_eta("b") == 3 * 2.0 + 4.0


def test_format_duration():
    assert format_duration(None) == "?" and format_duration(65) == "1:05" and format_duration(3725) == "1:02:05"


def test_plain_lines_when_not_a_terminal():
    clock, out = Clock(), io.StringIO()
    d = ProgressDisplay(3, stream=out, clock=clock)
    assert not d.live
    d.plan_lane("h/node0", 3)
    d.start_job("h/node0", "h/node0 t=2", 3)
    for i in range(3):
        clock.t += 2.0
        d.row("h/node0", "h/node0 t=2", f"n_kv={16 * i} S_PP=1.00 S_TG=2.00 t/s noise=0%")
    d.note("run 1: ok")
    d.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/3] h/node0 t=2 n_kv=0 S_PP=1.00 S_TG=2.00 t/s noise=0% ETA ?"
    assert lines[1].endswith("ETA 0:02") and lines[2].endswith("ETA 0:00") and lines[3] == "run 1: ok"
    assert "\x1b[" not in out.getvalue()


def test_live_display_on_a_terminal_has_bar_lanes_and_eta():
    clock, out = Clock(), io.StringIO()
    d = ProgressDisplay(4, title="run 7", stream=out, live=True, width=160, clock=clock)
    d.plan_lane("h/node0", 4)
    d.start_job("h/node0", "h/node0 b1 t=88 tb=128 ctk=q8_0 k_repack=off", 4)
    for _ in range(2):
        clock.t += 3.0
        d.row("h/node0", "ignored in live mode", "n_kv=512 S_PP=10.00 S_TG=5.00 t/s noise=4%")
    d.note("job 1 on h/node0: retry: lost")
    d.close()
    text = out.getvalue()
    assert "\x1b[" in text                               # a terminal display, redrawn in place
    assert "run 7" in text and "2/4" in text and "ETA 0:06" in text
    assert "t=88 tb=128 ctk=q8_0 k_repack=off" in text and "S_PP=10.00 S_TG=5.00" in text and "noise=4%" in text
    assert "job 1 on h/node0: retry: lost" in text


def test_run_progress_events_are_lines_with_facts():
    out = io.StringIO()
    rp = RunProgress(stream=out, live=False)
    rp(ProgressEvent("run 1: 1 host(s), 1 slot(s), 2 point(s) to measure", "plan", run_id=1, total=2,
                     lanes={"h/n0": (2, 1)}))
    rp(ProgressEvent("job 0: h/n0 t=1", "job", lane="h/n0", text="h/n0 t=1", rows=2))
    ev = ProgressEvent("[1/2] h/n0 t=1 job 0 n_kv=0", "row", lane="h/n0", text="h/n0 t=1 job 0", stats="n_kv=0")
    assert ev.startswith("[1/2]") and ev.kind == "row"   # still a str for callers that collect lines
    rp(ev)
    rp(ProgressEvent("run 1: ok", "done"))
    assert rp.display is None
    assert out.getvalue().splitlines() == ["run 1: 1 host(s), 1 slot(s), 2 point(s) to measure",
                                           "[1/2] h/n0 t=1 job 0 n_kv=0 ETA ?", "run 1: ok"]


def test_settings_in_words():
    a = {"threads": 88, "threads_batch": 128, "type_k": "q8_0", "k_repack": "off", "flash_attn": True, "seed": 0}
    b = dict(a, k_repack="on", flash_attn=False)
    vary = varying_keys([a, b])
    assert vary == ["flash_attn", "k_repack"]
    assert settings_in_words(a, vary) == "t=88 tb=128 ctk=q8_0 fa=1 k_repack=off"  # engine.options.describe


# -- bench: rows done / total, noise per row ------------------------------------------------
def _rows(n, pause=0.0):
    for i in range(n):
        if pause:
            time.sleep(pause)
        yield SweepRow(pp=16, tg=4, n_kv=16 * i, t_pp=0.1, speed_pp=160.0, t_tg=0.1, speed_tg=40.0, rss_hwm_mib=1.0)


def test_timed_rows_counts_stride_and_repetitions():
    assert timed_rows(SweepConfig(n_ctx=64, n_ubatch=16, nrep=2, stride=2)) == 4
    assert timed_rows(SweepConfig(n_ctx=32768, n_ubatch=512)) == 64


def test_bench_watch_warns_above_the_threshold():
    out = io.StringIO()
    # threshold below zero: every row counts as noisy, so the warning path runs whatever the load is
    w = BenchWatch(SweepConfig(n_ctx=48, n_ubatch=16), stream=out, live=False, threshold=-1.0)
    got = list(w.rows(_rows(3)))
    assert [r.n_kv for r, _ in got] == [0, 16, 32] and all(0.0 <= n <= 1.0 for _, n in got)
    text = out.getvalue()
    assert text.count("warning: row n_kv=") == 3 and "[3/3]" in text and "noise=" in text
    assert "3 of 3 rows were measured while other processes used" in text
    quiet = io.StringIO()
    list(BenchWatch(SweepConfig(n_ctx=16, n_ubatch=16), stream=quiet, live=False, threshold=1.0).rows(_rows(1)))
    assert "warning" not in quiet.getvalue()
    assert noise_warning(NOISE_WARN, "x") is None and "35%" in noise_warning(0.35, "x")


def test_bench_watch_sees_competing_processes():
    cpus = sorted(os.sched_getaffinity(0))
    hogs = [subprocess.Popen(["taskset", "-c", str(c), sys.executable, "-c",
                              "import time\nt = time.time()\nwhile time.time() - t < 4: pass"]) for c in cpus]
    try:
        time.sleep(0.3)
        out = io.StringIO()
        got = list(BenchWatch(SweepConfig(n_ctx=32, n_ubatch=16), stream=out, live=False).rows(_rows(2, pause=1.0)))
    finally:
        for h in hogs:
            h.wait()
    assert max(n for _, n in got) > 0.5, got   # we slept; the hogs had the CPUs
    assert "warning: row n_kv=" in out.getvalue()


def test_bench_cli_progress_on_stderr_noise_in_jsonl(micro_model):
    p = subprocess.run([sys.executable, "-m", "engine", "bench", "-m", str(micro_model), "-c", "32", "-ub", "16",
                        "-n", "2", "--output-format", "jsonl", "-nrep", "2"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.strip().splitlines()]  # stdout: JSON rows only
    assert len(rows) == 4 and all(0.0 <= r["noise"] <= 1.0 for r in rows)
    progress = [line for line in p.stderr.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in progress] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert all(" ETA " in line and "S_PP=" in line and "noise=" in line for line in progress)
    md = subprocess.run([sys.executable, "-m", "engine", "bench", "-m", str(micro_model), "-c", "32", "-ub", "16"],
                        capture_output=True, text=True, timeout=300)
    assert md.returncode == 0, md.stderr
    assert "[2/2]" in md.stderr and "[2/2]" not in md.stdout     # the table stays clean
