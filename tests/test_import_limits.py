"""Bounded imports: llama-bench SQL parsed (never run), size/line/row limits, re-import is a no-op."""
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from orchestrator.errors import ImportFormatError
from orchestrator.importers import parse_file
from orchestrator.importers.ingest import import_file, import_files, plan_import
from orchestrator.importers.limits import ImportLimits, parse_size
from orchestrator.importers.sql_dump import read_sql_dump
from orchestrator.store import Store

FIX = Path(__file__).parent / "fixtures"
SQL = FIX / "llama-bench-cpu.sql"
IK_SQL = FIX / "ik-llama-bench.sql"


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "s.db") as s:
        yield s


@pytest.mark.parametrize("path", [SQL, IK_SQL])
def test_sql_dump_reads_what_sqlite_would_store(path):
    """Reference: the (trusted) fixture run in SQLite; the parser must give the same typed records."""
    text = path.read_text()
    conn = sqlite3.connect(":memory:")
    conn.executescript(text)
    table = "llama_bench" if path == SQL else "test"
    cur = conn.execute(f"SELECT * FROM {table} ORDER BY rowid")
    cols = [c[0] for c in cur.description]
    want = [dict(zip(cols, r)) for r in cur.fetchall()]
    records, source = read_sql_dump(text, path.name)
    assert source == ("llama-bench" if path == SQL else "ik-llama-bench")
    assert [r for _, r in records] == want
    assert [type(v) for v in records[0][1].values()] == [type(v) for v in want[0].values()]


def _sql_with(tmp_path, extra: str, name="x.sql") -> Path:
    p = tmp_path / name
    p.write_text(SQL.read_text() + extra)
    return p


@pytest.mark.parametrize("extra,needle", [
    ("INSERT INTO llama_bench SELECT * FROM llama_bench;\n" * 18, "expected VALUES, found 'SELECT'"),
    ("INSERT INTO llama_bench (build_commit) VALUES (zeroblob(400000000));\n", "not 'zeroblob'"),
    ("ATTACH DATABASE '/tmp/evil.db' AS evil;\n", "'ATTACH' statement"),
    ("PRAGMA writable_schema = 1;\n", "'PRAGMA' statement"),
    ("DROP TABLE llama_bench;\n", "'DROP' statement"),
    ("CREATE TRIGGER t AFTER INSERT ON llama_bench BEGIN SELECT 1; END;\n", "expected TABLE"),
    ("CREATE TABLE other (a INTEGER);\n", "table 'other'"),
    ("INSERT INTO other VALUES (1);\n", "no CREATE TABLE"),
    ("INSERT INTO llama_bench (n_prompt) VALUES ((SELECT 1));\n", "only literal values"),
    ("INSERT INTO llama_bench (n_prompt, n_gen) VALUES (1);\n", "1 values for 2 columns"),
    ("INSERT INTO llama_bench (nope) VALUES (1);\n", "no column 'nope'"),
    ("INSERT INTO llama_bench (n_prompt) VALUES ('unterminated);\n", "unterminated string"),
    ("INSERT INTO llama_bench (n_prompt) VALUES (1)\n", "unterminated SQL statement"),
])
def test_sql_refuses_everything_llama_bench_does_not_write(tmp_path, extra, needle):
    p = _sql_with(tmp_path, extra)
    t0 = time.monotonic()
    with pytest.raises(ImportFormatError) as err:
        parse_file(p)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert msg.startswith(f"{p}:") and needle in msg, msg
    assert "\n" not in msg and not Path("/tmp/evil.db").exists()


def test_sql_limits_statements_rows_and_cells(tmp_path):
    p = _sql_with(tmp_path, "")
    assert len(parse_file(p).rows) == 4
    with pytest.raises(ImportFormatError, match=r"x\.sql:\d+: more than 3 SQL statements .*--limit statements="):
        parse_file(p, ImportLimits(statements=3))
    with pytest.raises(ImportFormatError, match=r"more than 3 rows .*--limit rows="):
        parse_file(p, ImportLimits(rows=3))
    with pytest.raises(ImportFormatError, match=r"string literal of \d+ characters is too long .*--limit cell="):
        parse_file(p, ImportLimits(cell=16))


def test_file_and_line_limits(tmp_path):
    log = FIX / "ik-sweep-bench-xeon6980p-q8_0-32k.log"
    size = log.stat().st_size
    with pytest.raises(ImportFormatError, match=rf"{size} bytes is too large to import \(limit file=1024;"):
        parse_file(log, ImportLimits(file=1024))
    long = tmp_path / "long.log"
    long.write_bytes(log.read_bytes().replace(b"\n", b"\n" + b"x" * 3000 + b"\n", 1))
    with pytest.raises(ImportFormatError, match=r"long\.log:2: line of 3000 bytes is too long .*--limit line="):
        parse_file(long, ImportLimits(line=2048))
    assert len(parse_file(long).rows) == 64  # default limits: fine


def test_rows_limit_for_logs_and_json(tmp_path):
    with pytest.raises(ImportFormatError, match="more than 10 sweep-bench rows"):
        parse_file(FIX / "ik-sweep-bench-xeon6980p-q8_0-32k.log", ImportLimits(rows=10))
    with pytest.raises(ImportFormatError, match="more than 5 measured rows"):
        parse_file(FIX / "llama-bench-cpu.json", ImportLimits(rows=5))


def test_non_regular_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.log"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(ImportFormatError, match="pipe.log: not a regular file"):
        parse_file(fifo)
    with pytest.raises(ImportFormatError, match="/dev/zero: not a regular file"):
        parse_file("/dev/zero")
    with pytest.raises(ImportFormatError, match="is a directory"):
        parse_file(tmp_path)
    assert time.monotonic() - t0 < 2


def test_deep_json_is_refused_not_a_recursion_error(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text('[{"n_prompt": 1, "avg_ns": 2, "x": ' + "[" * 100000 + "]" * 100000 + "}]")
    with pytest.raises(ImportFormatError, match="nested too deeply"):
        parse_file(p)


def test_parse_size_and_overrides():
    assert parse_size("64KiB", "x") == 65536 and parse_size("2M", "x") == 2 << 20 and parse_size("7", "x") == 7
    for bad in ("", "0", "-1", "1.5M", "1TB"):
        with pytest.raises(ImportFormatError):
            parse_size(bad, "x")
    assert ImportLimits().with_overrides(["file=1GiB", "rows=5"]) == ImportLimits(file=1 << 30, rows=5)
    with pytest.raises(ImportFormatError, match="NAME one of file, line, rows, statements, cell"):
        ImportLimits().with_overrides(["size=1"])


def test_same_data_again_is_a_no_op(store, tmp_path):
    first = import_file(store, SQL)
    variants = {"nl.sql": SQL.read_bytes() + b"\n\n", "crlf.sql": SQL.read_bytes().replace(b"\n", b"\r\n"),
                "spaces.sql": SQL.read_bytes().replace(b"VALUES (", b"VALUES  (")}
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
    again = import_files(store, [tmp_path / n for n in variants])
    assert all(r.duplicate and r.run_id == first.run_id for r in again)
    assert len(store.runs()) == 1 and store.count_points() == 4
    log = tmp_path / "sweep.log"
    shutil.copy(FIX / "ik-sweep-bench-xeon6980p-q8_0-32k.log", log)
    a = import_file(store, log)
    log.write_bytes(log.read_bytes() + b"\n   \n")
    assert import_file(store, log).duplicate and len(store.runs()) == 2 and not a.duplicate
    # Different data is a new run.
    log.write_bytes(log.read_bytes().replace(b"|    512 |    128 |      0 |", b"|    512 |    128 |      0 |", 1)
                    .replace(b"4.785", b"4.786", 1))
    assert not import_file(store, log).duplicate


def test_a_refused_batch_writes_nothing_and_creates_no_store(tmp_path):
    bad = _sql_with(tmp_path, "DELETE FROM llama_bench;\n", "bad.sql")
    with pytest.raises(ImportFormatError, match="bad.sql"):
        plan_import([SQL, bad])
    with pytest.raises(ImportFormatError, match="--host-profile"):
        plan_import([SQL], host_profile=str(bad))
    plan = plan_import([SQL, FIX / "llama-bench-cpu.json"])
    assert len(plan.files) == 2 and not (tmp_path / "s.db").exists()
    with Store.open(tmp_path / "s.db") as store:
        assert [r.n_points for r in plan.write(store)] == [4, 12]


def test_file_changed_between_the_passes_rolls_everything_back(store, tmp_path):
    a, b = tmp_path / "a.sql", tmp_path / "b.json"
    shutil.copy(SQL, a)
    shutil.copy(FIX / "llama-bench-cpu.json", b)
    plan = plan_import([a, b])
    b.write_text(b.read_text().replace("\"n_threads\": 2,", "\"n_threads\": 3,", 1))
    with pytest.raises(ImportFormatError, match="changed while being imported"):
        plan.write(store)
    assert store.runs() == []


_HDR = "|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |\n|---|---|---|---|---|---|---|\n"
_ROW = "| 1 | 1 | 0 | 1 | 1 | 1 | 1 |\n"
_N = 300_000  # a line under the 1 MiB limit; a quadratic pattern would take hours on it
_SLOW_LINES = {
    "print-meta": "print_info: a" + " " * _N + "x\n" + _HDR + _ROW,
    "loader-value": "llama_model_loader: - kv   1: general.name str = a" + " " * _N + "b\n" + _HDR + _ROW,
    "context-value": "llama_context: n_ctx = a" + " " * _N + "b\n" + _HDR + _ROW,
    "thp-brackets": "Current THP enabled and defrag configs are\n" + "[" * _N + "\n" + _HDR + _ROW,
    "md-t/s": "| model | size | test | t/s |\n|---|---|---|---|\n| m | 1 | pp512 | 1" + "+-" * (_N // 2) + "x |\n",
    "sql-unterminated-string": "CREATE TABLE llama_bench (n_prompt INTEGER, avg_ns INTEGER);\n"
                               "INSERT INTO llama_bench VALUES ('" + "a" * _N + ");\n",
    "csv-huge-header": "n_prompt,avg_ns," + "x" * _N + "\n1,2,3\n",
}


@pytest.mark.parametrize("name", list(_SLOW_LINES))
def test_long_adversarial_lines_parse_in_linear_time(tmp_path, name):
    p = tmp_path / "adversarial.log"
    p.write_text(_SLOW_LINES[name])
    t0 = time.monotonic()
    try:
        parse_file(p)
    except ImportFormatError as exc:
        assert str(exc).startswith(str(p))
    assert time.monotonic() - t0 < 5, name
