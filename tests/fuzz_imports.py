"""Bad files for `numasweep import`: hostile SQL, oversized files and lines, non-files,
malformed llama-bench / llama-sweep-bench output. Most go into a copy of a store that
already holds a run (it must stay byte-identical); some name a store that does not exist."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from fuzz_corpus import Built, Case, Ctx


def _import(make, *needles: str, name: str = "bad.log", seeded: bool = True, flags: tuple[str, ...] = (),
            names_file: bool = True):
    """``make(ctx, path)`` writes the input at ``path`` (or makes it a FIFO, a dir ...)."""
    def build(ctx: Ctx, d: Path) -> Built:
        store = d / "store" / "s.db"
        store.parent.mkdir()
        if seeded:
            shutil.copy(ctx.seed_store, store)
        make(ctx, d / name)
        return Built(("import", name, "--store", "store/s.db", *flags), ((name,) if names_file else ()) + needles)
    return build


def _text(text: str | bytes):
    def make(ctx: Ctx, p: Path) -> None:
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return make


def _fixture(fname: str, edit=lambda t: t):
    def make(ctx: Ctx, p: Path) -> None:
        p.write_text(edit((ctx.fixtures / fname).read_text(encoding="utf-8", errors="replace")))
    return make


def _sql(extra: str):
    return _fixture("llama-bench-cpu.sql", lambda t: t + extra)


def _with_bad_profile(ctx: Ctx, p: Path) -> None:
    shutil.copy(ctx.fixtures / "llama-bench-cpu.json", p)
    (p.parent / "hp.json").write_bytes(b"\xff\xfe\x00garbage")


TABLE = "|    PP |     TG |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |\n|---|---|---|---|---|---|---|\n"


def _log(rows: str):
    return _fixture("ik-sweep-bench-xeon6980p-q8_0-32k.log",
                    lambda t: t[:t.index("|    PP |")] + TABLE + rows)


CASES = [
    Case("import", "sql-insert-select-doubling", _import(
        _sql("INSERT INTO llama_bench SELECT * FROM llama_bench;\n" * 18), "SELECT", name="bad.sql")),
    Case("import", "sql-zeroblob-400MB", _import(
        _fixture("llama-bench-cpu.sql", lambda t: t.replace("'8cf427ff'", "zeroblob(400000000)", 1)),
        "zeroblob", name="bad.sql", seeded=False)),
    Case("import", "sql-attach", _import(_sql("ATTACH DATABASE 'evil.db' AS evil;\n"), "ATTACH", name="bad.sql")),
    Case("import", "sql-pragma", _import(_sql("PRAGMA writable_schema = 1;\n"), "PRAGMA", name="bad.sql")),
    Case("import", "sql-trigger", _import(_sql("CREATE TRIGGER t AFTER INSERT ON llama_bench BEGIN "
                                               "INSERT INTO llama_bench SELECT * FROM llama_bench; END;\n"),
                                          name="bad.sql")),
    Case("import", "sql-recursive-cte", _import(_sql(
        "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT x FROM r;\n"), "WITH",
        name="bad.sql")),
    Case("import", "sql-function-in-values", _import(_fixture(
        "llama-bench-cpu.sql", lambda t: t.replace("'8cf427ff'", "randomblob(1000)", 1)), "randomblob",
        name="bad.sql")),
    Case("import", "sql-unterminated", _import(_fixture("llama-bench-cpu.sql", lambda t: t.rstrip().rstrip(";")),
                                               "unterminated", name="bad.sql")),
    Case("import", "sql-statement-limit", _import(_sql(""), "--limit statements=", name="bad.sql",
                                                  flags=("--limit", "statements=3"))),
    Case("import", "sql-cell-over-64KiB", _import(_fixture(
        "llama-bench-cpu.sql", lambda t: t.replace("'8cf427ff'", "'" + "x" * 70000 + "'", 1)), "--limit cell=",
        name="bad.sql", seeded=False)),
    Case("import", "file-over-limit", _import(_fixture("llama-bench-cpu.json"), "--limit file=", name="bad.json",
                                              flags=("--limit", "file=1KiB"))),
    Case("import", "line-over-1MiB", _import(_text("x" * (1 << 20 | 1) + "\n"), "--limit line=")),
    Case("import", "fifo", _import(lambda ctx, p: os.mkfifo(p), "not a regular file")),
    Case("import", "directory", _import(lambda ctx, p: p.mkdir(), "directory", seeded=False)),
    Case("import", "missing", _import(lambda ctx, p: None)),
    Case("import", "empty", _import(_text(""), "empty")),
    Case("import", "binary-garbage", _import(_text(bytes(range(256)) * 64), "unrecognised")),
    Case("import", "json-nested-10^5", _import(_text('[{"n_prompt": 1, "avg_ns": 1, "x": ' + "[" * 100000
                                                     + "]" * 100000 + "}]"), "nested", name="bad.json")),
    Case("import", "json-not-objects", _import(_text('[1, 2, 3, "n_prompt", "avg_ns"]'), name="bad.json")),
    Case("import", "json-n-prompt-string", _import(_fixture(
        "llama-bench-cpu.json", lambda t: t.replace('"n_prompt": 512', '"n_prompt": "many"', 1)), "n_prompt",
        name="bad.json")),
    Case("import", "jsonl-row-not-object", _import(_fixture(
        "llama-bench-cpu.jsonl", lambda t: t + "[1, 2]\n"), name="bad.jsonl", seeded=False)),
    Case("import", "csv-short-row", _import(_fixture(
        "llama-bench-cpu.csv", lambda t: t + '"only","three","cols"\n'), name="bad.csv")),
    Case("import", "sweep-table-non-numeric", _import(_log("|   512 |    128 |      0 |    four |   107.01 |   12.241 |"
                                                           "    10.46 |\n"), "not numeric")),
    Case("import", "sweep-table-nan-speed", _import(_log("|   512 |    128 |      0 |    4.785 |      nan |   12.241 |"
                                                         "    10.46 |\n"), "speed_pp")),
    Case("import", "sweep-table-n-kv-10^30", _import(_log("|   512 |    128 | 1" + "0" * 30 + " |    4.785 |   107.01 |"
                                                          "   12.241 |    10.46 |\n"), "n_kv", seeded=False)),
    Case("import", "sweep-jsonl-negative-time", _import(_text(json.dumps(
        {"n_kv_max": 512, "pp": 512, "tg": 128, "n_kv": 0, "t_pp": -1.0, "speed_pp": 1.0, "t_tg": 1.0,
         "speed_tg": 1.0}) + "\n"), "t_pp")),
    Case("import", "markdown-zero-speed", _import(_fixture(
        "llama-bench-cpu.md", lambda t: t.replace("141.88 ± 1.06", "0.00 ± 0.00", 1)), "t/s", name="bad.md")),
    Case("import", "sql-unterminated-300KB-string", _import(_text(
        "CREATE TABLE llama_bench (n_prompt INTEGER, avg_ns INTEGER);\nINSERT INTO llama_bench VALUES ('"
        + "a" * 300_000 + ");\n"), "unterminated string", name="bad.sql")),
    Case("import", "log-300KB-space-run", _import(_text(
        "print_info: a" + " " * 300_000 + "x\n" + TABLE + "| 512 | 128 | 0 | four | 1 | 1 | 1 |\n"), "not numeric")),
    Case("import", "host-profile-binary", _import(_with_bad_profile, "--host-profile", "hp.json", name="ok.json",
                                                  flags=("--host-profile", "hp.json"), names_file=False)),
]
