"""Named migrations of the results store, one function per version step.

``MIGRATIONS[n]`` upgrades a version-n store to n+1 inside the caller's open
transaction and returns n+1; ``Store.open`` applies them in order and then records
the new version. A failing migration rolls back and leaves the file as it was.
"""
from __future__ import annotations

import json
import sqlite3

from engine.options import BY_NAME, canonical_name
from orchestrator.point import canonical_json, settings_key_of


def v1_to_v2_builds(conn: sqlite3.Connection) -> int:
    """Builds become part of a point's identity; settings take engine.options names.

    - a ``builds`` table (name, kind, identity) and ``points.build`` / ``points.build_id``,
      and ``points.weight_bytes`` (a row fact, until now kept among the settings);
      the unique index gains the build;
    - a measured point's ``settings["backend"]`` (builtin | external | replay) becomes its
      build name (its identity was not recorded: build_id stays NULL);
    - setting aliases are renamed (n_ctx -> c, ubatch -> ub, batch -> b, fused_moe -> fmoe, ...)
      and flags made booleans, and each point's settings_key recomputed. Nothing is dropped,
      so no two stored points can collide.
    """
    conn.execute("""CREATE TABLE builds (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, identity_json TEXT NOT NULL,
        identity_key TEXT NOT NULL UNIQUE, first_seen TEXT NOT NULL)""")
    conn.execute("ALTER TABLE points ADD COLUMN weight_bytes INTEGER")
    conn.execute("ALTER TABLE points ADD COLUMN build TEXT")
    conn.execute("ALTER TABLE points ADD COLUMN build_id INTEGER REFERENCES builds(id)")
    conn.execute("DROP INDEX points_identity")
    measured = {r[0] for r in conn.execute("SELECT id FROM runs WHERE source = 'numasweep'")}
    rows = conn.execute("SELECT id, run_id, settings_json FROM points").fetchall()
    for point_id, run_id, settings_json in rows:
        settings = json.loads(settings_json)
        build = settings.pop("backend", None) if run_id in measured else None
        renamed: dict = {}
        for key, value in settings.items():
            name = canonical_name(key)
            s = BY_NAME.get(name)
            if s is not None and s.kind is bool and isinstance(value, int):
                value = bool(value)
            if name in renamed and renamed[name] != value:
                name = key  # two spellings that disagree: keep both as they were
            renamed[name] = value
        sj = canonical_json(renamed)
        conn.execute("UPDATE points SET settings_json = ?, settings_key = ?, build = ? WHERE id = ?",
                     (sj, settings_key_of(sj), build, point_id))
    conn.execute("""CREATE UNIQUE INDEX points_identity ON points
        (run_id, COALESCE(host_id, -1), COALESCE(slot, ''), COALESCE(build, ''), settings_key, rep, n_kv, pp, tg)""")
    return 2


MIGRATIONS = {1: v1_to_v2_builds}
