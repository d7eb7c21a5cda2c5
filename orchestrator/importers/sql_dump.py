"""llama-bench ``-o sql`` output, parsed and never executed.

llama-bench writes one ``CREATE TABLE IF NOT EXISTS llama_bench (...)`` (ik_llama.cpp:
table ``test``) and one ``INSERT INTO llama_bench (cols) VALUES ('v', ...);`` per test.
Exactly that is accepted: CREATE TABLE of those two tables with plain ``name TYPE``
columns, INSERT ... VALUES of literals (strings, numbers, NULL), ``--`` comments.
Anything else (SELECT, functions such as zeroblob, ATTACH, PRAGMA, triggers ...) is
refused naming the file and line, before it can cost time or memory; statements, rows
and literal sizes are bounded by ``ImportLimits``. Values get SQLite's column affinity
(an INTEGER column's '512' is 512), as if the dump had been run.
"""
from __future__ import annotations

import re
from typing import Iterator

from orchestrator.errors import ImportFormatError
from orchestrator.importers.limits import DEFAULT_LIMITS, ImportLimits

TABLES = ("llama_bench", "test")  # mainline, ik_llama.cpp
# Each alternative has one way to match a given text (strings are "unrolled": `''` only
# between runs), so an unterminated 1 MiB literal fails in linear time, not exponential.
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*)
  | (?P<string>'[^']*(?:''[^']*)*')
  | (?P<number>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<quoted>"[^"]*(?:""[^"]*)*")
  | (?P<punct>[(),;])
  | (?P<operator>[*=<>/.|!%&~^:?@$\[\]{}+-])
""", re.X)
_INT = re.compile(r"[-+]?\d+")
_REAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


class _Statement:
    """The tokens of one statement: (kind, text) pairs; kind is string|number|word|punct."""

    def __init__(self, name: str, line: int, tokens: list[tuple[str, str]]):
        self.name, self.line, self.tokens, self.i = name, line, tokens, 0

    def refuse(self, why: str) -> ImportFormatError:
        return ImportFormatError(f"{self.name}:{self.line}: SQL statement refused: {why} "
                                 "(accepted: what llama-bench -o sql writes, CREATE TABLE and INSERT ... VALUES)")

    def peek(self) -> tuple[str, str]:  # ("end", ...) past the last token
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "end of statement")

    def take(self, kind: str, text: str | None = None) -> str:
        k, t = self.peek()
        if k != kind or (text is not None and t.upper() != text):
            raise self.refuse(f"expected {text or kind}, found {t[:40]!r}")
        self.i += 1
        return t

    def accept(self, text: str) -> bool:
        k, t = self.peek()
        if k in ("word", "punct") and t.upper() == text:
            self.i += 1
            return True
        return False

    def ident(self) -> str:
        k, t = self.peek()
        if k == "word":
            self.i += 1
            return t
        if k == "quoted":
            self.i += 1
            return t[1:-1].replace('""', '"')
        raise self.refuse(f"expected a name, found {t[:40]!r}")

    def end(self) -> None:
        if self.i != len(self.tokens):
            raise self.refuse(f"unexpected {self.tokens[self.i][1][:40]!r}")


def _statements(text: str, name: str, limits: ImportLimits) -> Iterator[_Statement]:
    pos, line, n = 0, 1, 0
    tokens: list[tuple[str, str]] = []
    start = 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            what = "an unterminated string" if text[pos] in "'\"" else f"character {text[pos]!r}"
            raise ImportFormatError(f"{name}:{line}: SQL statement refused: {what}")
        kind, tok = m.lastgroup, m.group()
        if kind == "string" and len(tok) - 2 > limits.cell:
            raise limits.refuse("cell", f"{name}:{line}: SQL string literal of {len(tok) - 2} characters is too long")
        if kind not in ("space", "comment"):
            if not tokens:
                start = line
            if tok == ";":
                n += 1
                if n > limits.statements:
                    raise limits.refuse("statements", f"{name}:{start}: more than {limits.statements} SQL statements")
                yield _Statement(name, start, tokens)
                tokens = []
            else:
                tokens.append((kind, tok))
        line += tok.count("\n")
        pos = m.end()
    if tokens:
        raise ImportFormatError(f"{name}:{start}: unterminated SQL statement (no ';')")


def _literal(st: _Statement) -> str | int | float | None:
    k, t = st.peek()
    st.i += 1
    if k == "string":
        return t[1:-1].replace("''", "'")
    if k == "number":
        return int(t) if _INT.fullmatch(t) else float(t)
    if k == "word" and t.upper() == "NULL":
        return None
    raise st.refuse(f"only literal values are accepted, not {t[:40]!r}")


def _affinity(decl: str, value):
    """SQLite's type affinity of a declared column type, applied to one value."""
    d = decl.upper()
    if value is None:
        return None
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    if "BLOB" in d or not d:
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INT.fullmatch(text):
            value = int(text)
        elif _REAL.fullmatch(text):
            value = float(text)
        else:
            return value
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return float(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)  # INTEGER / NUMERIC: a real with no fraction is stored as an integer
    return value


def _create(st: _Statement, tables: dict[str, list[tuple[str, str]]]) -> None:
    st.take("word", "TABLE")
    exists_ok = st.accept("IF")
    if exists_ok:
        st.take("word", "NOT")
        st.take("word", "EXISTS")
    table = st.ident()
    if table not in TABLES:
        raise st.refuse(f"table {table!r} (llama-bench writes {' or '.join(TABLES)})")
    st.take("punct", "(")
    cols: list[tuple[str, str]] = []
    while True:
        col = st.ident()
        decl = []
        while st.peek()[0] == "word":
            decl.append(st.ident())
        cols.append((col, " ".join(decl)))
        if not st.accept(","):
            break
    st.take("punct", ")")
    st.end()
    if len({c for c, _ in cols}) != len(cols):
        raise st.refuse(f"table {table} names a column twice")
    if table in tables:
        if not exists_ok or tables[table] != cols:
            raise st.refuse(f"table {table} is created twice")
        return
    tables[table] = cols


def _insert(st: _Statement, tables: dict[str, list[tuple[str, str]]]) -> tuple[str, list[dict]]:
    st.take("word", "INTO")
    table = st.ident()
    if table not in tables:
        raise st.refuse(f"INSERT into {table!r}, which no CREATE TABLE before it made")
    decl = dict(tables[table])
    cols = []
    if st.accept("("):
        while True:
            col = st.ident()
            if col not in decl:
                raise st.refuse(f"table {table} has no column {col!r}")
            cols.append(col)
            if not st.accept(","):
                break
        st.take("punct", ")")
    else:
        cols = list(decl)
    st.take("word", "VALUES")
    rows = []
    while True:
        st.take("punct", "(")
        values = [_literal(st)]
        while st.accept(","):
            values.append(_literal(st))
        st.take("punct", ")")
        if len(values) != len(cols):
            raise st.refuse(f"{len(values)} values for {len(cols)} columns")
        row = dict.fromkeys(decl)
        row.update({c: _affinity(decl[c], v) for c, v in zip(cols, values)})
        rows.append(row)
        if not st.accept(","):
            break
    st.end()
    return table, rows


def read_sql_dump(text: str, name: str, limits: ImportLimits = DEFAULT_LIMITS) -> tuple[list[tuple[int, dict]], str]:
    """([(line, record)], source) of the llama_bench table (mainline) or else the test table (ik)."""
    tables: dict[str, list[tuple[str, str]]] = {}
    records: dict[str, list[tuple[int, dict]]] = {t: [] for t in TABLES}
    n_rows = 0
    for st in _statements(text, name, limits):
        if not st.tokens:
            continue  # a lone ';'
        verb = st.take("word").upper() if st.peek()[0] == "word" else None
        if verb == "CREATE":
            _create(st, tables)
        elif verb == "INSERT":
            table, rows = _insert(st, tables)
            n_rows += len(rows)
            if n_rows > limits.rows:
                raise limits.refuse("rows", f"{name}:{st.line}: more than {limits.rows} rows")
            records[table] += [(st.line, r) for r in rows]
        else:
            raise st.refuse(f"{st.tokens[0][1][:40]!r} statement")
    table = next((t for t in TABLES if t in tables), None)
    if table is None:
        raise ImportFormatError(f"{name}:1: SQL dump has no llama_bench (mainline) or test (ik) table")
    return records[table], "llama-bench" if table == "llama_bench" else "ik-llama-bench"
