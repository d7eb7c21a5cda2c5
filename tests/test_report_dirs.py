"""Reports never overwrite each other: default directory per store and run, --out to choose."""
from __future__ import annotations

import subprocess
import sys

from orchestrator.report import default_report_dir, write_report
from orchestrator.store import Point, Store


def _store_with_run(path, speed=100.0, label="lbl") -> None:
    with Store.open(path) as s:
        run = s.create_run(settings={}, label=label)
        for n_kv in (0, 512):
            s.add_point(run, Point(n_kv=n_kv, pp=512, tg=128, t_pp=512 / speed, speed_pp=speed, t_tg=1.0,
                                   speed_tg=128.0, slot="node0", settings={"threads": 2}))
        s.finish_run(run, "ok")


def test_two_stores_in_one_directory_never_share_a_report(tmp_path):
    _store_with_run(tmp_path / "x.db", 100.0, label="store x")
    _store_with_run(tmp_path / "y.db", 50.0, label="store y")
    with Store.open(tmp_path / "x.db", create=False) as sx, Store.open(tmp_path / "y.db", create=False) as sy:
        hx = write_report(sx, [1])
        hy = write_report(sy, [1])
        again = write_report(sx, [1])
    assert hx.parent == tmp_path / "x-reports" / "run-1"
    assert hy.parent == tmp_path / "y-reports" / "run-1"
    assert again.parent == tmp_path / "x-reports" / "run-1.2"   # a second report of the same run: a new dir
    md_x, md_y = (hx.parent / "report.md").read_text(), (hy.parent / "report.md").read_text()
    assert f"Store {(tmp_path / 'x.db').resolve()}" in md_x and 'run 1 "store x" (numasweep, ok' in md_x
    assert f"Store {(tmp_path / 'y.db').resolve()}" in md_y and 'run 1 "store y"' in md_y
    assert "<title>numasweep report: x.db, run 1</title>" in hx.read_text()


def test_default_dir_names(tmp_path):
    store = tmp_path / "res" / "numasweep.db"
    assert default_report_dir(store, [3]) == tmp_path / "res" / "numasweep-reports" / "run-3"
    assert default_report_dir(store, [3]).name == "run-3.2"
    assert default_report_dir(store, [1, 2]).name == "run-1_2"
    assert default_report_dir(store, list(range(1, 9))).name == "runs-1-to-8"
    assert default_report_dir(store, [1, 2, 5, 7, 9]).name == "runs-1-to-9-5"


def test_report_cli_default_and_out(tmp_path):
    _store_with_run(tmp_path / "s.db")

    def report(*args):
        res = subprocess.run([sys.executable, "-m", "orchestrator", "report", "--store", str(tmp_path / "s.db"),
                              *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert f"report: {tmp_path / 's-reports' / 'run-1' / 'report.html'}" in report("1")
    assert f"{tmp_path / 's-reports' / 'run-1.2' / 'report.html'}" in report("1")
    assert f"{tmp_path / 'mine' / 'report.html'}" in report("--out", str(tmp_path / "mine"))
