"""Reports: statistics, verdicts, plots, Markdown and self-contained HTML (checked in headless chromium)."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.errors import ReportError
from orchestrator.importers.ingest import import_file
from orchestrator.report import write_report
from orchestrator.report_data import Comparison, Stat, compare, verdict
from orchestrator.store import Point, Store

FIX = Path(__file__).parent / "fixtures"
IK_LOG = FIX / "ik-sweep-bench-xeon6980p-q8_0-32k.log"


def _synthetic_run(store: Store, host_id=None, reps=3, label="repack on/off", seed=1) -> int:
    """k_repack off vs on: on is 15% faster PP above N_KV 1000, TG unchanged."""
    rnd = random.Random(seed)
    run = store.create_run(settings={"weight_bytes": 3.0e9}, label=label)
    for k_repack, gain in (("off", 1.0), ("on", 1.15)):
        for rep in range(reps):
            for n_kv in range(0, 4096, 512):
                spp = (110 * gain if n_kv > 1000 else 110) * (1 - n_kv / 20000) * (1 + rnd.gauss(0, 0.01))
                stg = 10 * (1 - n_kv / 40000) * (1 + rnd.gauss(0, 0.01))
                store.add_point(run, Point(
                    n_kv=n_kv, pp=512, tg=128, t_pp=512 / spp, speed_pp=spp, t_tg=128 / stg, speed_tg=stg,
                    rep=rep, host_id=host_id, slot="node0", settings={"k_repack": k_repack, "threads": 2},
                    rss_hwm_mib=900 + n_kv / 10, repack_scratch_mib=n_kv * 0.01 if k_repack == "on" else 0.0,
                    verified_cpus="0-1", verified_mems="0", noise=0.01))
    store.finish_run(run, "ok")
    return run


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "r.db")
    yield s
    s.close()


def test_verdict_ranges_and_single_sample():
    def row(n, a, b, p):
        return Comparison(n, Stat(a, 1.0, 3), Stat(b, 1.0, 3), b / a, p)
    rows = [row(0, 100, 101, 0.6), row(512, 100, 110, 0.01), row(1024, 100, 115, 0.001), row(1536, 100, 99, 0.5)]
    assert verdict(rows, "pp", "A", "B") == (
        "PP: no significant difference for N_KV 0; B faster by 10–15% for N_KV 512–1024; "
        "no significant difference for N_KV 1536.")
    mixed = rows[:2] + [Comparison(2048, Stat(100, None, 1), Stat(120, 1.0, 3), 1.2, None)]
    assert verdict(mixed, "tg", "A", "B").endswith("one sample, no significance can be claimed for N_KV 2048.")
    single = compare([dict(n_kv=0, pp=512, tg=0, speed_pp=100.0)], [dict(n_kv=0, pp=512, tg=0, speed_pp=108.0)], "pp")
    assert single[0].p_value is None and single[0].ratio == pytest.approx(1.08)
    assert "no significance can be claimed" in verdict(single, "pp", "A", "B")


def test_report_auto_ab_on_one_run_with_two_settings(store, tmp_path):
    import hostprofiles

    prof = hostprofiles.load_profile("xeon-6980p-2s-snc-off")
    host = store.upsert_host(fingerprint=prof.fingerprint, profile=prof.to_json(), name="xeon-a")
    run = _synthetic_run(store, host_id=host)
    html = write_report(store, [run], tmp_path / "out")
    out = html.parent
    for name in ("report.md", "report.html", "performance_comparison_pp.png", "performance_comparison_tg.png",
                 "memory.png"):
        assert (out / name).stat().st_size > 1000, name
    md = (out / "report.md").read_text()
    assert "## A/B: k_repack=on vs k_repack=off" in md and "Welch's t-test" in md
    pp = next(line for line in md.splitlines() if line.startswith("PP: "))
    tg = next(line for line in md.splitlines() if line.startswith("TG: "))
    assert re.search(r"no significant difference for N_KV 0–512; B faster by 1[3-7]–1[5-7]% for N_KV 1024–3584", pp), pp
    assert tg == "TG: no significant difference for N_KV 0–3584.", tg
    assert "## Setting vs setting: k_repack" in md
    # TG bandwidth: 3 GB/token x ~10 t/s = ~30 GB/s of the 554 GB/s node.
    assert "## TG effective memory bandwidth" in md and "554 GB/s per node × 1 node(s) bound" in md
    assert re.search(r"\| 0 \| (9\.9|10\.0)\d ± 0\.\d\d \| (29|30)\.\d \| 5% \|", md)
    assert "SNC off" in md and "xeon-6980p" in md
    assert "| 512 | 128 | 0 |" in md  # sweep table rows
    assert "simulated" not in md.split("## Plots")[0]


def test_report_two_imported_runs_single_samples(store, tmp_path):
    a = import_file(store, IK_LOG, label="master").run_id
    faster = IK_LOG.read_text(encoding="utf-8", errors="replace").replace(
        "|   512 |    128 |   4096 |    7.973 |    64.22 |", "|   512 |    128 |   4096 |    7.000 |    73.14 |")
    assert "73.14" in faster
    (tmp_path / "pr.log").write_text(faster, encoding="utf-8")
    b = import_file(store, tmp_path / "pr.log", label="pr").run_id
    md = (write_report(store, [a, b], tmp_path / "o").parent / "report.md").read_text()
    assert "## A/B: 2 vs 1" in md
    assert "PP: B/A = 1.000–1.139 over N_KV 0–32256; one sample per point, so no significance can be claimed." in md
    assert "model name | DeepSeek V3 0324" in md and "host state: power_profile | performance" in md
    assert "numactl -N 0 -m 0 ./build/bin/llama-sweep-bench" in md


def test_report_selectors_and_errors(store, tmp_path):
    run = _synthetic_run(store)
    md = (write_report(store, None, tmp_path / "o", baseline="k_repack=on", compare="k_repack=off", by="setting")
          .parent / "report.md").read_text()
    assert "## A/B: k_repack=off vs k_repack=on" in md and "B slower" in md and "Host vs host" not in md
    sim = store.create_run(settings={}, label="sim")
    store.add_point(sim, Point(n_kv=0, pp=512, tg=128, t_pp=1.0, speed_pp=512.0, t_tg=2.0, speed_tg=64.0, simulated=True))
    md = (write_report(store, None, tmp_path / "o2").parent / "report.md").read_text()
    assert "Warning: these runs mix rows from simulated hosts" in md and "sim (simulated)" in md
    with pytest.raises(ReportError, match="no run 99"):
        write_report(store, [99], tmp_path / "x")
    with pytest.raises(ReportError, match="matches no series"):
        write_report(store, [run], tmp_path / "x", baseline="k_repack=maybe", compare="k_repack=on")
    with pytest.raises(ReportError, match="go together"):
        write_report(store, [run], tmp_path / "x", baseline="1")
    empty = store.create_run(settings={})
    with pytest.raises(ReportError, match="hold no points"):
        write_report(store, [empty], tmp_path / "x")


def test_llama_bench_phases_report(store, tmp_path):
    run = import_file(store, FIX / "llama-bench-cpu.json").run_id
    md = (write_report(store, [run], tmp_path / "o").parent / "report.md").read_text()
    # pp512 / tg128 tests at depth 0 and 1024 merge into one sweep table with 3 repetitions.
    assert "| 512 | 128 | 1024 | 4.391 ± 0.019 | 116.60 ± 0.52 | 4.804 ± 0.015 | 26.64 ± 0.08 |" in md


# -- the HTML in a real browser ---------------------------------------------------------
_PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || (e.target && e.target.tagName) || e)); }, true);
['error', 'warn'].forEach(function (k) { var f = console[k]; console[k] = function () { window.__errors.push(k + ': ' + Array.prototype.join.call(arguments, ' ')); f.apply(console, arguments); }; });
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = document.createElement('pre'); out.id = 'numasweep-probe';
  out.textContent = JSON.stringify({errors: window.__errors, widths: imgs.map(function (i) { return i.naturalWidth; })});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _probe(html_file: Path, tmp_path: Path) -> tuple[dict, str]:
    page = tmp_path / "probe.html"
    # Probe first in <head>, so it sees every error of the page after it.
    page.write_text(html_file.read_text(encoding="utf-8").replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8")
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    m = re.search(r'<pre id="numasweep-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"chromium produced no probe result (rc {proc.returncode}): {proc.stderr[-500:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&")), proc.stderr


@pytest.fixture
def chromium():
    if _chromium() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required in CI (scripts/test.sh installs Debian's chromium)")
        pytest.skip("chromium not installed (apt-get install chromium); CI=true makes this a failure")


def test_html_renders_in_headless_chromium(chromium, store, tmp_path):
    run = _synthetic_run(store)
    html = write_report(store, [run], tmp_path / "out")
    text = html.read_text(encoding="utf-8")
    # Self-contained: every image inline, nothing fetched from anywhere.
    assert "<script" not in text and 'src="http' not in text and "<link" not in text
    assert text.count('src="data:image/png;base64,') == 3
    result, stderr = _probe(html, tmp_path)
    assert result["errors"] == [], result
    assert len(result["widths"]) == 3 and all(w > 0 for w in result["widths"]), result
    assert "CONSOLE" not in stderr, stderr[-1000:]
    # The probe itself catches a broken image: it is not a test that always passes.
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><head></head><body><img src="data:image/png;base64,AAAA"></body></html>')
    bad, _ = _probe(broken, tmp_path)
    assert bad["widths"] == [0] and bad["errors"]


def test_ab_selector_over_several_configurations_is_split_not_pooled(store, tmp_path):
    """`--baseline k_repack=off` over a run with t=1 and t=2: one comparison per thread count,
    each pooling only true repetitions (n = reps), never t=1 and t=2 rows as one sample set."""
    run = store.create_run(settings={}, label="t x repack")
    for threads in (1, 2):
        for k_repack in ("off", "on"):
            for rep in range(2):
                spp = 100.0 * threads * (1.1 if k_repack == "on" else 1.0) + rep
                store.add_point(run, Point(n_kv=0, pp=512, tg=128, t_pp=512 / spp, speed_pp=spp, t_tg=1.0,
                                           speed_tg=128.0, rep=rep, slot="node0",
                                           settings={"k_repack": k_repack, "threads": threads}))
    write_report(store, [run], tmp_path / "r", baseline="k_repack=off", compare="k_repack=on")
    md = (tmp_path / "r" / "report.md").read_text()
    ab = md.split("## A/B")[1].split("\n## ")[0]
    assert "Split by threads" in ab and "### threads=1" in ab and "### threads=2" in ab
    # each cell pools the 2 repetitions of one configuration: n = 2, sd of 0.7, not of 100
    assert "| 0 | 100.50 ± 0.71 | 2 | 110.50 ± 0.71 | 2 | 1.100 |" in ab
    assert "| 0 | 200.50 ± 0.71 | 2 | 220.50 ± 0.71 | 2 | 1.100 |" in ab
    # selectors that share no combination are refused, naming the keys
    other = store.create_run(settings={}, label="other")
    store.add_point(other, Point(n_kv=0, pp=512, tg=128, t_pp=1, speed_pp=512, t_tg=1, speed_tg=128,
                                 settings={"k_repack": "auto", "threads": 4}))
    with pytest.raises(ReportError, match="share no combination of k_repack"):
        write_report(store, [run, other], tmp_path / "r2", baseline="threads=1", compare=str(other))
