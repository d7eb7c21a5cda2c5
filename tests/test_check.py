"""numasweep check: the one-sided regression gate over repetitions, its formats and exit codes."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from xml.etree import ElementTree as ET

import pytest

from orchestrator.check import CheckError, check, one_sided_p, render_json, render_junit, render_text, side_from_store
from orchestrator.report_data import Stat
from orchestrator.store import Point, Store


def _host(store, profile="xeon-6980p-2s-snc-off", name="xeon-a"):
    import hostprofiles

    prof = hostprofiles.load_profile(profile)
    return store.upsert_host(fingerprint=f"{prof.fingerprint}:{name}", profile=prof.to_json(), name=name)


def _run(store, host, *, pp_factor=1.0, tg_factor=1.0, reps=3, jitter=0.005, seed=0, label=None) -> int:
    rnd = random.Random(seed)
    run = store.create_run(settings={}, label=label)
    for rep in range(reps):
        for n_kv in (0, 512, 1024):
            spp = 100.0 * pp_factor * (1 - n_kv / 8192) * (1 + rnd.gauss(0, jitter))
            stg = 20.0 * tg_factor * (1 + rnd.gauss(0, jitter))
            store.add_point(run, Point(n_kv=n_kv, pp=512, tg=128, t_pp=512 / spp, speed_pp=spp, t_tg=128 / stg,
                                       speed_tg=stg, rep=rep, host_id=host, slot="node0",
                                       settings={"threads": 4, "type_k": "q8_0", "k_repack": "on"}))
    store.finish_run(run, "ok")
    return run


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "s.db")
    yield s
    s.close()


def _check(store, a, b, **kw):
    return check(side_from_store(store, a), side_from_store(store, b), **kw)


def test_same_speed_passes_and_a_significant_drop_fails(store):
    h = _host(store)
    base = _run(store, h, seed=1)
    same = _run(store, h, seed=2)
    res = _check(store, base, same)
    assert res.exit_code == 0 and len(res.comparisons) == 6 and not res.untested  # 3 N_KV x PP/TG
    assert "PASS: no regression" in render_text(res)
    slow = _run(store, h, pp_factor=0.90, seed=3)                  # PP 10% slower, TG unchanged
    res = _check(store, base, slow)
    assert res.exit_code == 1
    assert {(c.phase, c.n_kv) for c in res.regressions} == {("pp", 0), ("pp", 512), ("pp", 1024)}
    assert all(c.p_value < 0.001 and c.change == pytest.approx(-0.10, abs=0.02) for c in res.regressions)
    text = render_text(res)
    assert "FAIL: 3 regression(s)" in text and "REGRESSION" in text and "t=4 tb" not in text
    assert "| xeon-a | node0 | - | t=4 ctk=q8_0 | pp512 | 512 |" in text
    faster = _run(store, h, pp_factor=1.2, seed=4)
    assert _check(store, base, faster).exit_code == 0               # one-sided: faster is never bad


def test_threshold_and_significance(store):
    h = _host(store)
    base = _run(store, h, seed=1)
    small = _run(store, h, pp_factor=0.97, seed=5)                # 3% slower: significant, under 5%
    res = _check(store, base, small)
    assert res.exit_code == 0 and any(c.p_value < 0.05 for c in res.comparisons if c.phase == "pp")
    assert _check(store, base, small, max_drop=0.02).exit_code == 1
    noisy_base = _run(store, h, jitter=0.25, seed=6, reps=2)
    noisy = _run(store, h, pp_factor=0.9, jitter=0.25, seed=7, reps=2)  # 10% slower within ±25% noise
    res = _check(store, noisy_base, noisy)
    unsure = [c for c in res.comparisons if c.change < -0.05 and c.p_value >= 0.05]
    assert unsure and all(not c.regression and c.verdict(0.05, 0.05) == "slower, not significant" for c in unsure)


def test_single_repetition_counts_without_a_test(store):
    h = _host(store)
    base = _run(store, h, reps=1, seed=1)
    slow = _run(store, h, pp_factor=0.9, reps=3, seed=2)
    res = _check(store, base, slow)
    assert res.exit_code == 1 and res.untested
    assert all(c.p_value is None for c in res.comparisons)
    text = render_text(res)
    assert "REGRESSION (untested: 1 repetition)" in text and "no test was possible" in text


def test_hosts_must_match_unless_allowed(store):
    a = _host(store, name="xeon-a")
    twin = _host(store, name="xeon-b")                          # same hardware and tuning: comparable
    other = _host(store, profile="epyc-9654-2s-nps1", name="epyc")
    base = _run(store, a, seed=1)
    assert _check(store, base, _run(store, twin, seed=2)).exit_code == 0
    elsewhere = _run(store, other, pp_factor=0.5, seed=3)
    with pytest.raises(CheckError, match="no comparable host.*--allow-host-mismatch"):
        _check(store, base, elsewhere)
    res = _check(store, base, elsewhere, allow_host_mismatch=True)
    assert res.exit_code == 1 and "--allow-host-mismatch" in render_text(res)
    hostless = store.create_run(settings={})
    store.add_point(hostless, Point(n_kv=0, pp=512, tg=128, t_pp=5.0, speed_pp=102.4, t_tg=6.4, speed_tg=20.0,
                                    slot="node0", settings={"threads": 4, "type_k": "q8_0", "k_repack": "on"}))
    with pytest.raises(CheckError, match="no host profile"):
        _check(store, base, hostless)


def test_one_sided_p():
    base, slow = Stat.of([100.0, 101.0, 99.0]), Stat.of([90.0, 91.0, 89.0])
    assert one_sided_p(base, slow) < 0.001 and one_sided_p(slow, base) > 0.999
    assert one_sided_p(Stat.of([1.0]), slow) is None
    assert one_sided_p(Stat.of([5.0, 5.0]), Stat.of([4.0, 4.0])) == 0.0


def test_json_and_junit(store):
    h = _host(store)
    res = _check(store, _run(store, h, seed=1), _run(store, h, tg_factor=0.8, seed=2))
    doc = json.loads(render_json(res))
    assert doc["status"] == "fail" and doc["regressions"] == 3 and len(doc["comparisons"]) == 6
    reg = [c for c in doc["comparisons"] if c["regression"]]
    assert {c["phase"] for c in reg} == {"tg"} and all(c["base"]["n"] == 3 and c["tested"] for c in reg)
    suite = ET.fromstring(render_junit(res)).find("testsuite")
    assert suite.get("tests") == "6" and suite.get("failures") == "3"
    failed = [tc for tc in suite.findall("testcase") if tc.find("failure") is not None]
    assert len(failed) == 3 and all(tc.get("name").startswith("S_TG tg128") for tc in failed)


def test_cli_exit_codes(tmp_path):
    with Store.open(tmp_path / "s.db") as s:
        h = _host(s)
        _run(s, h, seed=1)
        _run(s, h, seed=2)
        _run(s, h, pp_factor=0.8, seed=3)

    def gate(*args):
        return subprocess.run([sys.executable, "-m", "orchestrator", "check", "--store", str(tmp_path / "s.db"),
                               *args], capture_output=True, text=True, timeout=120)
    ok = gate("--baseline", "1", "--run", "2")
    assert ok.returncode == 0 and ok.stdout.strip().endswith("PASS: no regression"), ok.stderr
    bad = gate("--baseline", "1", "--run", "3", "--format", "junit", "-o", str(tmp_path / "junit.xml"))
    assert bad.returncode == 1 and "FAIL (3 regression(s))" in bad.stderr
    assert ET.parse(tmp_path / "junit.xml").getroot().find("testsuite").get("failures") == "3"
    assert gate("--baseline", "1", "--run", "3", "--max-drop", "25").returncode == 0
    missing = gate("--baseline", "1", "--run", "9")
    assert missing.returncode == 2 and "no run 9" in missing.stderr
    nonsense = gate("--baseline", "nope", "--run", "1")
    assert nonsense.returncode == 2 and "neither a run id" in nonsense.stderr
