"""Results store: schema, identity of points, resume keys, crash safety (real SIGKILL)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.errors import USER_ERRORS, StoreError
from orchestrator.store import Point, Store

ROOT = Path(__file__).resolve().parents[1]


def _pt(n_kv=0, rep=0, **kw):
    base = dict(n_kv=n_kv, pp=512, tg=128, t_pp=1.0, speed_pp=512.0, t_tg=2.0, speed_tg=64.0, rep=rep,
                settings={"threads": 4, "type_k": "q8_0"})
    base.update(kw)
    return Point(**base)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "sub" / "dir" / "numasweep.db")
    yield s
    s.close()


def test_open_creates_parents_wal_and_version(store):
    assert store.path.exists()
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == 2
    conn.close()


def test_unknown_schema_version_is_refused_naming_file(tmp_path):
    path = tmp_path / "old.db"
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"old\.db.*99"):
        Store.open(path)


def test_non_database_file_is_refused(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        Store.open(path)
    assert issubclass(StoreError, USER_ERRORS)


def test_add_point_dedupes_and_done_keys(store):
    run = store.create_run(settings={"c": 1024}, label="A")
    host = store.upsert_host(fingerprint="fp1", profile={"cpus": [0, 1]}, name="box")
    assert store.upsert_host(fingerprint="fp1", profile=None) == host
    p = _pt(host_id=host, slot="node0")
    assert store.add_point(run, p) is True
    assert store.add_point(run, p) is False
    # Same keys, other settings: a different point.
    assert store.add_point(run, _pt(host_id=host, slot="node0", settings={"threads": 8})) is True
    # Null host and slot must still be deduplicated.
    assert store.add_point(run, _pt(n_kv=512)) is True
    assert store.add_point(run, _pt(n_kv=512)) is False
    keys = store.done_keys(run)
    assert p.key() in keys and _pt(n_kv=512).key() in keys and len(keys) == 3
    rows = store.points(run)
    assert len(rows) == 3 and rows[0]["label"] == "A"
    assert store.run(run)["n_points"] == 3


def test_points_round_trip_fields(store):
    run = store.create_run(settings={}, spec={"name": "x"}, version="0.1.0", git_commit="abc")
    p = _pt(placement={"policy": "per-node", "node": 0}, rss_hwm_mib=123.5, repack_scratch_mib=1.5,
            verified_cpus="0-3", verified_mems="0", noise=0.02, simulated=True, slot="node0")
    store.add_point(run, p)
    (row,) = store.points(run)
    assert row["placement"] == {"policy": "per-node", "node": 0}
    assert row["settings"] == {"threads": 4, "type_k": "q8_0"} and row["settings_key"] == p.settings_key
    assert (row["rss_hwm_mib"], row["verified_cpus"], row["noise"], row["simulated"]) == (123.5, "0-3", 0.02, True)
    r = store.run(run)
    assert r["spec"] == {"name": "x"} and r["status"] == "running" and r["git_commit"] == "abc"
    store.finish_run(run, "partial", note="host b lost")
    r = store.run(run)
    assert r["status"] == "partial" and r["note"] == "host b lost" and r["finished_at"]


def test_bad_values_are_one_line_errors(store):
    with pytest.raises(StoreError, match="t_pp"):
        _pt(t_pp=-1.0)
    with pytest.raises(StoreError, match="n_kv"):
        _pt(n_kv=1.5)
    with pytest.raises(StoreError, match="speed_tg"):
        _pt(speed_tg=float("nan"))
    with pytest.raises(StoreError, match="settings"):
        _pt(settings={"x": object()})
    with pytest.raises(StoreError, match="status"):
        store.finish_run(store.create_run(settings={}), "done")
    with pytest.raises(StoreError, match="no run 999"):
        store.add_point(999, _pt())
    with pytest.raises(StoreError, match="no run 999"):
        store.run(999)


def test_from_sweep_row_maps_engine_keys():
    row = {"n_kv_max": 32768, "n_batch": 2048, "n_ubatch": 512, "flash_attn": 1, "n_gpu_layers": -1,
           "n_threads": 88, "n_threads_batch": 128, "pp": 512, "tg": 128, "n_kv": 1024, "t_pp": 5.579,
           "speed_pp": 91.78, "t_tg": 13.024, "speed_tg": 9.83, "rss_hwm_mib": 1000.0, "k_repack": "auto",
           "type_k": "q8_0", "type_v": "f16", "repack_scratch_mib": 3.0, "rep": 2}
    p = Point.from_sweep_row(row, slot="node0")
    assert (p.n_kv, p.rep, p.slot, p.repack_scratch_mib) == (1024, 2, "node0", 3.0)
    # ik's JSONL keys take engine.options names
    assert p.settings == {"c": 32768, "b": 2048, "ub": 512, "flash_attn": True, "n_gpu_layers": -1,
                          "threads": 88, "threads_batch": 128, "k_repack": "auto", "type_k": "q8_0",
                          "type_v": "f16"}
    # a job's applied settings are the point's settings, exactly: the row's echo is left out
    job = Point.from_sweep_row(row, slot="node0", settings={"model": "tiny", "c": 32768, "type_v": None})
    assert job.settings == {"model": "tiny", "c": 32768, "type_v": None}
    # flash_attn 1 (ik) and true (ours) are the same setting.
    assert Point.from_sweep_row({**row, "flash_attn": True}).settings_key == Point.from_sweep_row(row).settings_key
    with pytest.raises(StoreError, match="speed_tg"):
        Point.from_sweep_row({k: v for k, v in row.items() if k != "speed_tg"})


def test_concurrent_reader_sees_committed_points(store):
    run = store.create_run(settings={})
    store.add_point(run, _pt())
    other = Store.open(store.path)
    try:
        assert len(other.points(run)) == 1
        store.add_point(run, _pt(n_kv=512))
        assert len(other.points(run)) == 2
    finally:
        other.close()


_WRITER = textwrap.dedent("""
    import sys
    from orchestrator.store import Store, Point
    store = Store.open(sys.argv[1])
    run = store.create_run(settings={"writer": True})
    i = 0
    while True:
        store.add_point(run, Point(n_kv=i, pp=512, tg=128, t_pp=1.0, speed_pp=512.0, t_tg=2.0, speed_tg=64.0,
                                   settings={"threads": 4}))
        print(i, flush=True)  # printed only after add_point returned: committed
        i += 1
""")


def test_sigkill_while_writing_keeps_every_committed_point(tmp_path):
    db = tmp_path / "crash.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    last = -1
    for line in proc.stdout:
        last = int(line)
        if last >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The writer ran on until the kill landed: the pipe holds the rest of what it reported.
    for line in proc.stdout.read().splitlines():
        last = int(line)
    proc.stdout.close()
    assert last >= 300, "writer died before writing"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with Store.open(db) as s:
        n_kv = sorted(p["n_kv"] for p in s.points())
    # Every point reported committed is there, in order; at most one more (killed before its print).
    assert n_kv[: last + 1] == list(range(last + 1))
    assert len(n_kv) in (last + 1, last + 2)


_PARALLEL_WRITER = textwrap.dedent("""
    import sys
    from orchestrator.store import Store, Point
    with Store.open(sys.argv[1]) as store:
        run = store.create_run(settings={"writer": sys.argv[2]})
        for i in range(150):
            store.add_point(run, Point(n_kv=i, pp=512, tg=128, t_pp=1.0, speed_pp=512.0, t_tg=2.0, speed_tg=64.0))
""")


def test_two_writer_processes_share_one_store(tmp_path):
    db = tmp_path / "shared.db"
    Store.open(db).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _PARALLEL_WRITER, str(db), name], cwd=ROOT, env=env,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err  # busy_timeout: writers wait for each other, never "database is locked"
    with Store.open(db) as s:
        assert [r["n_points"] for r in s.runs()] == [150, 150]


def test_store_import_report_modules_load_neither_ray_nor_numba():
    code = ("import sys; import orchestrator.store, orchestrator.importers, orchestrator.importers.ingest, "
            "orchestrator.report, orchestrator.export, orchestrator.cli_store; "
            "print(sorted(m for m in ('ray', 'numba', 'engine.model', 'engine.quant') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_scratch_high_water_mark_is_not_a_setting():
    # the engine's per-row repack_scratch_hwm_mib grows along a sweep; as a setting it
    # would split one run's rows into many settings keys
    from orchestrator.point import Point

    base = {"n_kv": 0, "pp": 512, "tg": 128, "t_pp": 1.0, "speed_pp": 512.0, "t_tg": 1.0, "speed_tg": 128.0,
            "k_repack": "on", "repack_scratch_mib": 0.3}
    a = Point.from_sweep_row({**base, "repack_scratch_hwm_mib": 0.3})
    b = Point.from_sweep_row({**base, "repack_scratch_hwm_mib": 1.1})
    assert "repack_scratch_hwm_mib" not in a.settings
    assert a.settings_key == b.settings_key
