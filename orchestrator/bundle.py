"""Result bundles: one self-contained, versioned file per run, made on a machine you cannot reach.

``numasweep bundle RUN -o FILE`` writes a JSON document (gzip when FILE ends in .gz):

    {"format": "numasweep-bundle", "version": 1, "created_at", "created_by",
     "run":    label, source, status, settings, spec, meta, times, note, the run's id in its store,
     "hosts":  per host: fingerprint, name, profile (topology, ISA, tuning state), simulated,
     "builds": per build: name, kind and identity (binary hash / package version + commit),
     "models": per model of the spec: path or shape, size and sha256 of the file (hashed when bundled),
     "points": every point, with its host key, build and original time}

``numasweep import FILE`` turns it into the same run in another store: same points
(values, settings, placement, verified pinning, noise, times) and host facts (profile
and fingerprint), the run marked ``source = "bundle"`` with ``meta.bundle`` naming the
file, its sha256 and where the run came from. The run's content hash is the sha256 of
the canonical payload (not of the file's bytes), so importing the same run twice, from
one file or two, is a no-op. Unknown formats and versions are refused, naming the file.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.errors import ImportFormatError, StoreError
from orchestrator.point import Point, canonical_json
from orchestrator.store import Store

FORMAT = "numasweep-bundle"
VERSION = 1
MAX_BYTES = 1 << 30  # decompressed: a bundle of 10^6 points is ~500 MB of JSON
_GZIP_MAGIC = b"\x1f\x8b"
_POINT_FIELDS = ("slot", "placement", "settings", "rep", "n_kv", "pp", "tg", "t_pp", "speed_pp", "t_tg", "speed_tg",
                 "rss_hwm_mib", "repack_scratch_mib", "verified_cpus", "verified_mems", "noise", "simulated")
_RUN_FIELDS = ("label", "source", "status", "settings", "spec", "meta", "version", "git_commit", "source_file",
               "content_hash", "started_at", "finished_at", "note")


class BundleError(ImportFormatError):
    """A bundle cannot be written or read; names the file."""


# -- writing -------------------------------------------------------------------------------
def make_bundle(store: Store, run_id: int, *, hash_models: bool = True) -> dict:
    run = store.run(run_id)  # raises naming the store
    if run["status"] == "running":
        raise BundleError(f"run {run_id} is still running (or was interrupted: `numasweep resume {run_id}` first)")
    points = store.points(run_id)
    host_ids = sorted({p["host_id"] for p in points if p["host_id"] is not None})
    hosts = {hid: store.host(hid) for hid in host_ids}
    key = {hid: f"h{i}" for i, hid in enumerate(host_ids)}
    known = {b["id"]: b for b in store.builds()}
    build_ids = sorted({p["build_id"] for p in points if p.get("build_id") is not None})
    bkey = {bid: f"b{i}" for i, bid in enumerate(build_ids)}
    return {
        "format": FORMAT, "version": VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "created_by": {"numasweep": _version(), "store": str(Path(store.path).resolve()), "run_id": run_id},
        "run": {f: run.get(f) for f in _RUN_FIELDS},
        "hosts": [{"key": key[hid], "fingerprint": h["fingerprint"], "name": h["name"], "profile": h["profile"],
                   "simulated": bool(h["simulated"])} for hid, h in hosts.items()],
        "builds": [{"key": bkey[bid], "name": known[bid]["name"], "kind": known[bid]["kind"],
                    "identity": known[bid]["identity"]} for bid in build_ids],
        "models": _models(run, Path(store.path).parent, hash_models),
        "points": [{"host": key.get(p["host_id"]), "build": p.get("build"), "build_key": bkey.get(p.get("build_id")),
                    "created_at": p["created_at"], **{f: p[f] for f in _POINT_FIELDS}} for p in points],
    }


def write_bundle(store: Store, run_id: int, path, *, hash_models: bool = True) -> Path:
    """Write the bundle of ``run_id`` to ``path`` (gzip when it ends in .gz); never overwrites."""
    path = Path(path)
    if path.exists():
        raise BundleError(f"-o {path}: exists; a bundle is never overwritten (remove it or choose another name)")
    # "format" and "version" first, so a reader can tell what it holds from the first bytes
    data = json.dumps(make_bundle(store, run_id, hash_models=hash_models), separators=(",", ":"),
                      allow_nan=False).encode()
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)  # same run, same bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _version() -> str | None:
    try:
        from importlib.metadata import version
        return version("numasweep")
    except Exception:  # noqa: BLE001 - a checkout without an install
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _models(run: dict, store_dir: Path, hash_models: bool) -> list[dict]:
    """The spec's models and, where the file is here, its size and sha256 (hashed now, said so)."""
    spec = run.get("spec") or {}
    entries = spec.get("models") or ([spec["model"]] if isinstance(spec.get("model"), dict) else [])
    base = Path((run.get("settings") or {}).get("spec_dir") or ".")
    out = []
    for m in entries:
        if not isinstance(m, dict):
            continue
        if m.get("path"):
            file = Path(m["path"]) if Path(m["path"]).is_absolute() else base / m["path"]
            rec = {"path": str(m["path"])}
        elif m.get("shape"):
            seed = int(m.get("seed", 0))
            file = store_dir / "models" / f"{m['shape']}-seed{seed}.gguf"
            rec = {"shape": m["shape"], "seed": seed}
        else:
            continue
        if file.is_file():
            rec["size"] = file.stat().st_size
            if hash_models:
                rec["sha256"], rec["hashed"] = _sha256(file), "when bundled"
        else:
            rec["missing"] = f"{file} is not on the bundling machine"
        out.append(rec)
    return out


# -- reading -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    path: str
    doc: dict
    payload_hash: str   # sha256 of the canonical run + hosts + builds + models + points

    @property
    def run(self) -> dict:
        return self.doc["run"]


_HEAD = re.compile(rb'^\s*\{\s*"format"\s*:\s*"numasweep-bundle"')


def _regular(path) -> bool:
    """A regular file (never open a FIFO or device: reading one may block forever)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def is_bundle(path) -> bool:
    """Sniff the first bytes (decompressed when gzip): a bundle starts with its format."""
    if not _regular(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(256)
        if head.startswith(_GZIP_MAGIC):
            with gzip.open(path, "rb") as f:
                head = f.read(256)
    except (OSError, EOFError):
        return False
    return bool(_HEAD.match(head))


def read_bundle(path) -> Bundle:
    """Parse and check a bundle completely (nothing is written)."""
    name = str(path)
    if not _regular(path):
        raise BundleError(f"{name}: not a regular file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"{name}: cannot read bundle: {exc.strerror or exc}") from None
    if raw.startswith(_GZIP_MAGIC):
        try:
            with gzip.open(path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except (OSError, EOFError) as exc:
            raise BundleError(f"{name}: not a readable gzip file: {exc}") from None
    if len(raw) > MAX_BYTES:
        raise BundleError(f"{name}: bundle larger than {MAX_BYTES >> 20} MiB")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{name}: not a numasweep bundle (bad JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f"{name}: not a numasweep bundle (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise BundleError(f"{name}: bundle version {doc.get('version')!r} is unknown (this numasweep reads "
                          f"version {VERSION})")
    for field, kind in (("run", dict), ("hosts", list), ("builds", list), ("models", list), ("points", list)):
        if not isinstance(doc.get(field), kind):
            raise BundleError(f"{name}: bundle field {field!r} must be a JSON {kind.__name__}")
    bkeys = set()
    for i, b in enumerate(doc["builds"]):
        if not isinstance(b, dict) or not isinstance(b.get("key"), str) or b["key"] in bkeys \
                or not isinstance(b.get("name"), str) or not isinstance(b.get("kind"), str) \
                or not isinstance(b.get("identity"), dict):
            raise BundleError(f"{name}: builds[{i}] needs a unique string key, a name, a kind and an identity object")
        bkeys.add(b["key"])
    keys = set()
    for i, h in enumerate(doc["hosts"]):
        if not isinstance(h, dict) or not isinstance(h.get("key"), str) or h["key"] in keys:
            raise BundleError(f"{name}: hosts[{i}] needs a unique string key")
        if h.get("profile") is not None and not isinstance(h["profile"], dict):
            raise BundleError(f"{name}: hosts[{i}].profile must be an object")
        keys.add(h["key"])
    run = doc["run"]
    if not isinstance(run.get("settings"), dict) or not isinstance(run.get("source"), str):
        raise BundleError(f"{name}: run needs settings (object) and source (string)")
    for i, p in enumerate(doc["points"]):
        if not isinstance(p, dict):
            raise BundleError(f"{name}: points[{i}] is not an object")
        if p.get("host") is not None and p["host"] not in keys:
            raise BundleError(f"{name}: points[{i}].host {p['host']!r} is not one of the bundle's hosts")
        if p.get("build_key") is not None and p["build_key"] not in bkeys:
            raise BundleError(f"{name}: points[{i}].build_key {p['build_key']!r} is not one of the bundle's builds")
        if not isinstance(p.get("created_at"), str):
            raise BundleError(f"{name}: points[{i}].created_at must be a string")
        try:
            _point(p, None)
        except (StoreError, TypeError) as exc:
            raise BundleError(f"{name}: points[{i}]: {exc}") from None
    payload = {k: doc[k] for k in ("run", "hosts", "builds", "models", "points")}
    digest = hashlib.sha256(canonical_json(payload, "bundle").encode()).hexdigest()
    return Bundle(name, doc, digest)


def _point(p: dict, host_id: int | None, build_id: int | None = None) -> Point:
    return Point(**{f: p.get(f) for f in _POINT_FIELDS if f not in ("simulated", "settings")},
                 settings=p.get("settings") or {}, simulated=bool(p.get("simulated")), host_id=host_id,
                 build=p.get("build"), build_id=build_id)


@dataclass(frozen=True)
class BundleImport:
    path: str
    run_id: int
    n_points: int
    duplicate: bool

    def describe(self) -> str:
        if self.duplicate:
            return f"{self.path}: bundle already imported as run {self.run_id}; nothing added"
        return f"{self.path}: run {self.run_id} (bundle), {self.n_points} points"


def import_bundle(store: Store, bundle: Bundle) -> BundleImport:
    """Write the bundle's run, hosts and points in one transaction (a no-op when already imported)."""
    existing = store.run_by_hash(bundle.payload_hash)
    if existing is not None:
        return BundleImport(bundle.path, existing["id"], 0, True)
    doc, run = bundle.doc, bundle.run
    meta = dict(run.get("meta") or {})
    meta["bundle"] = {"file": str(Path(bundle.path).resolve()), "sha256": _sha256(Path(bundle.path)),
                      "payload_sha256": bundle.payload_hash, "created_at": doc.get("created_at"),
                      "created_by": doc.get("created_by"), "source": run.get("source"),
                      "source_content_hash": run.get("content_hash"), "models": doc["models"],
                      "builds": doc["builds"]}
    with store.transaction():
        host_ids = {h["key"]: store.upsert_host(fingerprint=h.get("fingerprint"), profile=h.get("profile"),
                                                name=h.get("name"), simulated=bool(h.get("simulated")))
                    for h in doc["hosts"]}
        build_ids = {b["key"]: store.upsert_build(name=b["name"], kind=b["kind"], identity=b["identity"])
                     for b in doc["builds"]}
        run_id = store.create_run(
            settings=run["settings"], spec=run.get("spec"), label=run.get("label"), source="bundle",
            status=run.get("status") or "ok", version=run.get("version"), git_commit=run.get("git_commit"),
            meta=meta, source_file=run.get("source_file"), content_hash=bundle.payload_hash,
            started_at=run.get("started_at"), finished_at=run.get("finished_at"), note=run.get("note"))
        pts = doc["points"]
        n = store.add_points(run_id, [_point(p, host_ids.get(p.get("host")), build_ids.get(p.get("build_key")))
                                      for p in pts],
                             created_at=[p["created_at"] for p in pts])
    return BundleImport(bundle.path, run_id, n, False)


def side_from_bundle(path):
    """The bundle's run as one side of ``numasweep check`` (without importing it)."""
    from orchestrator.check import Side

    bundle = read_bundle(path)
    hosts = {h["key"]: h for h in bundle.doc["hosts"]}
    points = []
    for p in bundle.doc["points"]:
        point = _point(p, None)
        host = hosts.get(p.get("host")) or {}
        points.append({**p, "settings": point.settings, "settings_key": point.settings_key,
                       "host_name": host.get("name"), "host_fingerprint": host.get("fingerprint"),
                       "host_fp": (host.get("profile") or {}).get("fingerprint")})
    run = bundle.run
    label = f"bundle {Path(path).name} (run {bundle.doc.get('created_by', {}).get('run_id', '?')}" + (
        f" \"{run['label']}\")" if run.get("label") else ")")
    return Side(label, tuple(points))
