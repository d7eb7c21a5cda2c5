"""The SQLite results store: runs, hosts and points, crash-safe and append-only.

WAL mode, one transaction per point: a coordinator killed mid-sweep leaves a
readable file holding every point whose ``add_point`` returned. ``synchronous=
NORMAL`` keeps that guarantee for process crashes (the WAL is written before
COMMIT returns) and trades only the last commits on a power loss for speed.
Connections are safe to share between threads (one lock); other processes may
read while a run writes.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from orchestrator.errors import StoreError
from orchestrator.point import Point, canonical_json, point_key
from orchestrator.store_migrations import MIGRATIONS

SCHEMA_VERSION = 2
DEFAULT_STORE = Path("numasweep-results") / "numasweep.db"
RUN_STATUSES = ("running", "ok", "partial", "failed")

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    label TEXT,
    source TEXT NOT NULL,              -- numasweep | ik-sweep-bench | llama-bench | ...
    status TEXT NOT NULL,
    settings_json TEXT NOT NULL,
    spec_json TEXT,
    meta_json TEXT,                    -- facts from an imported log (model, host state ...)
    version TEXT,
    git_commit TEXT,
    source_file TEXT,
    content_hash TEXT UNIQUE,          -- sha256 of an imported file: no double import
    started_at TEXT NOT NULL,
    finished_at TEXT,
    note TEXT
);
CREATE TABLE hosts (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT UNIQUE,
    name TEXT,
    profile_json TEXT,
    simulated INTEGER NOT NULL DEFAULT 0,
    first_seen TEXT NOT NULL
);
CREATE TABLE builds (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,                -- as the spec names it (builtin, ik-main, ...)
    kind TEXT NOT NULL,                -- builtin | external | replay
    identity_json TEXT NOT NULL,       -- version + commit, or binary path/size/sha256/--version
    identity_key TEXT NOT NULL UNIQUE, -- sha256 of name, kind and identity
    first_seen TEXT NOT NULL
);
CREATE TABLE points (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    host_id INTEGER REFERENCES hosts(id),
    slot TEXT,
    placement_json TEXT,
    settings_json TEXT NOT NULL,
    settings_key TEXT NOT NULL,
    rep INTEGER NOT NULL,
    n_kv INTEGER NOT NULL,
    pp INTEGER NOT NULL,
    tg INTEGER NOT NULL,
    t_pp REAL NOT NULL,
    speed_pp REAL NOT NULL,
    t_tg REAL NOT NULL,
    speed_tg REAL NOT NULL,
    rss_hwm_mib REAL,
    repack_scratch_mib REAL,
    verified_cpus TEXT,
    verified_mems TEXT,
    noise REAL,
    simulated INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    weight_bytes INTEGER,              -- weight bytes one TG token reads (engine rows)
    build TEXT,                        -- build name (NULL: an import without builds)
    build_id INTEGER REFERENCES builds(id)
);
-- NULL host/slot/build must collide like values do, hence the COALESCEs.
CREATE UNIQUE INDEX points_identity ON points
    (run_id, COALESCE(host_id, -1), COALESCE(slot, ''), COALESCE(build, ''), settings_key, rep, n_kv, pp, tg);
"""

_POINT_COLUMNS = (
    "run_id", "host_id", "slot", "placement_json", "settings_json", "settings_key", "rep",
    "n_kv", "pp", "tg", "t_pp", "speed_pp", "t_tg", "speed_tg", "rss_hwm_mib",
    "repack_scratch_mib", "verified_cpus", "verified_mems", "noise", "simulated", "created_at", "weight_bytes", "build",
    "build_id",
)
_INSERT_POINT = (
    f"INSERT OR IGNORE INTO points ({', '.join(_POINT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_POINT_COLUMNS))})"
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Store:
    """A results store file. Use ``Store.open(path)``; close with ``close()`` or ``with``."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()
        self._depth = 0  # nesting of transaction(): only the outermost commits

    # -- opening -------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path = DEFAULT_STORE, create: bool = True) -> "Store":
        """Open (or, with ``create``, make) a store; readers pass create=False."""
        path = Path(path)
        if not create and not path.exists():
            raise StoreError(f"{path}: no results store here (run a sweep or import first, or pass --store)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{path}: cannot open results store: {exc}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            store = cls(path, conn)
            store._init_schema()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{path}: not a numasweep results store: {exc}") from None
        except StoreError:
            conn.close()
            raise
        return store

    def _init_schema(self) -> None:
        with self.transaction():
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "schema_version" not in tables:
                if tables:
                    raise StoreError(f"{self.path}: SQLite file without a numasweep schema_version table")
                # statement by statement: executescript would commit our open transaction
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            row = self._conn.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else None
            while version in MIGRATIONS:
                version = MIGRATIONS[version](self._conn)
                self._conn.execute("UPDATE schema_version SET version = ?", (version,))
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: results store schema version {version!r} is unknown "
                    f"(this numasweep reads version {SCHEMA_VERSION})"
                )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside commit together or not at all (nested calls join the outer one)."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self._conn
            except BaseException:
                self._depth -= 1
                if outer:
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._conn.execute("COMMIT")

    # -- writing -------------------------------------------------------------
    def create_run(
        self,
        *,
        settings: dict,
        spec: dict | None = None,
        label: str | None = None,
        source: str = "numasweep",
        status: str = "running",
        version: str | None = None,
        git_commit: str | None = None,
        meta: dict | None = None,
        source_file: str | None = None,
        content_hash: str | None = None,
        started_at: str | None = None,
        finished_at: str | None = None,
        note: str | None = None,
    ) -> int:
        """A new run; ``started_at`` / ``finished_at`` (ISO 8601) keep a run's own times when it is
        re-created elsewhere (a bundle import); by default now, and now when not running."""
        if not isinstance(settings, dict):
            raise StoreError(f"run settings must be a dict, got {type(settings).__name__}")
        _check_status(status)
        with self.transaction() as conn:
            try:
                cur = conn.execute(
                    "INSERT INTO runs (label, source, status, settings_json, spec_json, meta_json, version,"
                    " git_commit, source_file, content_hash, started_at, finished_at, note)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        label, source, status, canonical_json(settings, "run settings"),
                        None if spec is None else canonical_json(spec, "run spec"),
                        None if meta is None else canonical_json(meta, "run meta"),
                        version, git_commit, source_file, content_hash, started_at or _now(),
                        None if status == "running" else (finished_at or _now()), note,
                    ),
                )
            except sqlite3.IntegrityError:
                raise StoreError(f"{self.path}: a run with content hash {content_hash} already exists") from None
            return int(cur.lastrowid)

    def upsert_host(
        self,
        *,
        fingerprint: str | None,
        profile: dict | None,
        name: str | None = None,
        simulated: bool = False,
    ) -> int:
        """The host's id, inserting it on first sight; a known fingerprint keeps one row."""
        profile_json = None if profile is None else canonical_json(profile, "host profile")
        if fingerprint is None and profile_json is not None:
            fingerprint = hashlib.sha256(profile_json.encode()).hexdigest()[:16]
        with self.transaction() as conn:
            if fingerprint is None:
                # Unknown host (an import without host facts): one row per (name, simulated).
                row = conn.execute(
                    "SELECT id FROM hosts WHERE fingerprint IS NULL AND name IS ? AND simulated = ?",
                    (name, int(simulated)),
                ).fetchone()
                if row:
                    return int(row[0])
            else:
                row = conn.execute("SELECT id FROM hosts WHERE fingerprint = ?", (fingerprint,)).fetchone()
                if row:
                    conn.execute(
                        "UPDATE hosts SET profile_json = COALESCE(?, profile_json), name = COALESCE(?, name)"
                        " WHERE id = ?",
                        (profile_json, name, row[0]),
                    )
                    return int(row[0])
            cur = conn.execute(
                "INSERT INTO hosts (fingerprint, name, profile_json, simulated, first_seen) VALUES (?, ?, ?, ?, ?)",
                (fingerprint, name, profile_json, int(simulated), _now()),
            )
            return int(cur.lastrowid)

    def upsert_build(self, *, name: str, kind: str, identity: dict) -> int:
        """The build's id, inserting it on first sight (same name, kind and identity: one row)."""
        identity_json = canonical_json(identity, "build identity")
        key = hashlib.sha256(canonical_json([name, kind, identity_json]).encode()).hexdigest()[:32]
        with self.transaction() as conn:
            row = conn.execute("SELECT id FROM builds WHERE identity_key = ?", (key,)).fetchone()
            if row:
                return int(row[0])
            cur = conn.execute(
                "INSERT INTO builds (name, kind, identity_json, identity_key, first_seen) VALUES (?, ?, ?, ?, ?)",
                (name, kind, identity_json, key, _now()))
            return int(cur.lastrowid)

    def builds(self) -> list[dict]:
        with self._lock:
            cur = self._conn.execute("SELECT id, name, kind, identity_json, first_seen FROM builds ORDER BY id")
            names = [c[0] for c in cur.description]
            out = []
            for row in cur.fetchall():
                d = dict(zip(names, row))
                d["identity"] = json.loads(d.pop("identity_json"))
                out.append(d)
            return out

    def add_point(self, run_id: int, point: Point) -> bool:
        """Store one point in its own transaction; False if that point was already stored."""
        row = self._point_row(run_id, point, _now())
        with self._lock:
            if self._depth:  # inside an open transaction(): join it
                return self.add_points(run_id, (point,)) == 1
            try:
                # Outside a transaction one INSERT is one atomic, durable transaction:
                # no separate BEGIN/COMMIT round trips on the coordinator's hot path.
                return self._conn.execute(_INSERT_POINT, row).rowcount == 1
            except sqlite3.IntegrityError as exc:
                raise StoreError(self._point_refusal(self._conn, run_id, [row], exc)) from None

    def add_points(self, run_id: int, points: Iterable[Point], created_at: Iterable[str] | None = None) -> int:
        """Store several points in ONE transaction (an import file); returns how many were new.

        ``created_at``: each point's original time (a bundle import), else now for all."""
        points = list(points)
        now = _now()
        times = [now] * len(points) if created_at is None else list(created_at)
        if len(times) != len(points):
            raise StoreError(f"add_points: {len(times)} created_at values for {len(points)} points")
        rows = [self._point_row(run_id, p, t) for p, t in zip(points, times)]
        with self.transaction() as conn:
            try:
                before = conn.total_changes
                conn.executemany(_INSERT_POINT, rows)
                return conn.total_changes - before
            except sqlite3.IntegrityError as exc:
                raise StoreError(self._point_refusal(conn, run_id, rows, exc)) from None

    def _point_refusal(self, conn: sqlite3.Connection, run_id: int, rows: list[tuple], exc: Exception) -> str:
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            return f"{self.path}: no run {run_id}"
        for host_id in {r[1] for r in rows if r[1] is not None}:
            if conn.execute("SELECT 1 FROM hosts WHERE id = ?", (host_id,)).fetchone() is None:
                return f"{self.path}: no host {host_id} (point for run {run_id})"
        return f"{self.path}: cannot store point for run {run_id}: {exc}"

    @staticmethod
    def _point_row(run_id: int, p: Point, now: str) -> tuple:
        if not isinstance(p, Point):
            raise StoreError(f"add_point wants a Point, got {type(p).__name__}")
        return (
            run_id, p.host_id, p.slot, p.placement_json,
            p.settings_json, p.settings_key, p.rep, p.n_kv, p.pp, p.tg, p.t_pp, p.speed_pp, p.t_tg,
            p.speed_tg, p.rss_hwm_mib, p.repack_scratch_mib, p.verified_cpus, p.verified_mems,
            p.noise, int(p.simulated), now, p.weight_bytes, p.build, p.build_id,
        )

    def finish_run(self, run_id: int, status: str, note: str | None = None) -> None:
        _check_status(status)
        if status == "running":
            raise StoreError("finish_run status must be ok, partial or failed")
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, note = COALESCE(?, note), finished_at = ? WHERE id = ?",
                (status, note, _now(), run_id),
            )
            if cur.rowcount == 0:
                raise StoreError(f"{self.path}: no run {run_id}")

    def set_run_status(self, run_id: int, status: str) -> None:
        """Mark a finished run running again (resume)."""
        _check_status(status)
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET status = ?, finished_at = NULL WHERE id = ?", (status, run_id))

    # -- reading -------------------------------------------------------------
    def runs(self) -> list[dict]:
        with self._lock:
            cur = self._conn.execute(
                "SELECT r.*, (SELECT COUNT(*) FROM points p WHERE p.run_id = r.id) AS n_points,"
                " (SELECT GROUP_CONCAT(DISTINCT COALESCE(h.name, h.fingerprint)) FROM points p"
                "  JOIN hosts h ON h.id = p.host_id WHERE p.run_id = r.id) AS hosts"
                " FROM runs r ORDER BY r.id"
            )
            return [_run_dict(cur, row) for row in cur.fetchall()]

    def run(self, run_id: int) -> dict:
        for r in self.runs():
            if r["id"] == run_id:
                return r
        raise StoreError(f"{self.path}: no run {run_id}")

    def run_by_hash(self, content_hash: str) -> dict | None:
        with self._lock:
            row = self._conn.execute("SELECT id FROM runs WHERE content_hash = ?", (content_hash,)).fetchone()
        return None if row is None else self.run(row[0])

    def hosts(self) -> list[dict]:
        with self._lock:
            cur = self._conn.execute("SELECT * FROM hosts ORDER BY id")
            out = []
            for row in cur.fetchall():
                d = dict(zip([c[0] for c in cur.description], row))
                d["profile"] = _loads(d.pop("profile_json"))
                d["simulated"] = bool(d["simulated"])
                out.append(d)
            return out

    def host(self, host_id: int) -> dict:
        for h in self.hosts():
            if h["id"] == host_id:
                return h
        raise StoreError(f"{self.path}: no host {host_id}")

    def points(self, run_id: int | None = None) -> list[dict]:
        """Points as dicts (settings/placement parsed), with run label and host name joined."""
        sql = (
            "SELECT p.*, r.label AS label, h.name AS host_name, h.fingerprint AS host_fingerprint,"
            " b.identity_json AS build_identity_json"
            " FROM points p JOIN runs r ON r.id = p.run_id LEFT JOIN hosts h ON h.id = p.host_id"
            " LEFT JOIN builds b ON b.id = p.build_id"
        )
        args: tuple = ()
        if run_id is not None:
            sql += " WHERE p.run_id = ?"
            args = (run_id,)
        sql += " ORDER BY p.run_id, p.host_id, p.slot, p.build, p.settings_key, p.n_kv, p.pp, p.tg, p.rep"
        with self._lock:
            cur = self._conn.execute(sql, args)
            names = [c[0] for c in cur.description]
            out = []
            for row in cur.fetchall():
                d = dict(zip(names, row))
                d["settings"] = json.loads(d.pop("settings_json"))
                d["placement"] = _loads(d.pop("placement_json"))
                d["build_identity"] = _loads(d.pop("build_identity_json"))
                d["simulated"] = bool(d["simulated"])
                out.append(d)
            return out

    def done_keys(self, run_id: int) -> set[tuple]:
        """Keys (``Point.key()``) of the points already stored for a run: skip these on resume."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT host_id, slot, build, settings_key, rep, n_kv, pp, tg FROM points WHERE run_id = ?", (run_id,)
            ).fetchall()
        return {point_key(*r) for r in rows}

    def count_points(self, run_id: int | None = None) -> int:
        with self._lock:
            if run_id is None:
                return int(self._conn.execute("SELECT COUNT(*) FROM points").fetchone()[0])
            return int(self._conn.execute("SELECT COUNT(*) FROM points WHERE run_id = ?", (run_id,)).fetchone()[0])


def _check_status(status: str) -> None:
    if status not in RUN_STATUSES:
        raise StoreError(f"run status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")


def _run_dict(cur: sqlite3.Cursor, row: tuple) -> dict:
    d = dict(zip([c[0] for c in cur.description], row))
    d["settings"] = json.loads(d.pop("settings_json"))
    d["spec"] = _loads(d.pop("spec_json"))
    d["meta"] = _loads(d.pop("meta_json"))
    d["hosts"] = d["hosts"].split(",") if d["hosts"] else []
    return d


__all__ = ["Store", "Point", "StoreError", "DEFAULT_STORE", "SCHEMA_VERSION", "RUN_STATUSES"]
