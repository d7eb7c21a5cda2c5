"""Model identity per host: size and sha256 of every model file a host will load.

Before any job runs, every host reports the size and sha256 of each model path of the
spec (synthetic shapes are generated on the host from their seed first, then hashed).
Hashes are cached per host by (real path, size, mtime), so a 100 GB GGUF is read once.
The coordinator compares each host's report with a reference: its own copy of the file
when it has one (it generates synthetic shapes itself), else the hash most hosts report.
A host whose bytes differ, or that lacks the file, is excluded with one line naming the
host, the path and both hashes; the others run.

A host's directory for generated models and the hash cache is ``$NUMASWEEP_HOME`` when
set (each simulated host of a fleet has its own), else ``~/.cache/numasweep``.
Imports neither Ray nor numba.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "NUMASWEEP_HOME"
_CHUNK = 8 * 2**20


def home() -> Path | None:
    env = os.environ.get(HOME_ENV)
    return Path(env) if env else None


def cache_dir() -> Path:
    h = home()
    return h / "cache" if h else Path.home() / ".cache/numasweep"


def local_model_path(path: str, shape: str | None, seed: int) -> str:
    """Where this host keeps model ``path``: a synthetic shape goes under $NUMASWEEP_HOME/models when set."""
    h = home()
    if shape is None or h is None:
        return path
    return str(h / "models" / f"{shape}-seed{seed}.gguf")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_identity(path: str, cache: Path | None = None) -> dict:
    """{"path", "size", "sha256"} of a file, or {"path", "error"} when it cannot be read."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError as exc:
        return {"path": path, "error": exc.strerror or str(exc)}
    cache_file = (cache or cache_dir()) / "model-hashes.json"
    entries = _read_cache(cache_file)
    hit = entries.get(real)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return {"path": path, "size": st.st_size, "sha256": hit["sha256"]}
    try:
        digest = sha256_file(real)
    except OSError as exc:
        return {"path": path, "error": exc.strerror or str(exc)}
    entries[real] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _write_cache(cache_file, entries)
    return {"path": path, "size": st.st_size, "sha256": digest}


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("entries", {}) if isinstance(data, dict) and data.get("version") == 1 else {}


def _write_cache(path: Path, entries: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": 1, "entries": entries}))
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written costs a re-hash, nothing else


def host_report(models) -> list[dict]:
    """On this host: each (path, name, shape, seed) model generated if synthetic, then identified."""
    from orchestrator.jobs import JobFailed
    from orchestrator.worker import ensure_model

    out = []
    for path, name, shape, seed in models:
        local = local_model_path(path, shape, seed)
        try:
            ensure_model(local, shape, seed)
        except JobFailed as exc:
            out.append({"model": name, "path": local, "error": str(exc)})
            continue
        out.append({"model": name, **file_identity(local)})
    return out


@dataclass(frozen=True)
class Verdict:
    reference: dict          # model name -> {"sha256", "size", "source"}
    hosts: dict              # host name -> {model name -> identity dict}
    excluded: dict           # host name -> one line per problem

    def record(self) -> dict:
        """What the run stores (inside its settings JSON)."""
        return {"reference": self.reference, "hosts": self.hosts,
                "excluded": {h: lines for h, lines in self.excluded.items()}}


def compare(models, own: dict[str, dict], reports: dict[str, list[dict]]) -> Verdict:
    """Judge every host's report against the coordinator's copy (``own``: model name -> identity)
    or, for a model the coordinator has not got, against the hash most hosts report."""
    by_host = {h: {r["model"]: r for r in rep} for h, rep in reports.items()}
    reference = {}
    for _path, name, _shape, _seed in models:
        mine = own.get(name)
        if mine and "sha256" in mine:
            reference[name] = {"sha256": mine["sha256"], "size": mine["size"], "source": "coordinator"}
            continue
        votes = Counter(r[name]["sha256"] for r in by_host.values() if "sha256" in r.get(name, {}))
        if votes:
            digest, n = votes.most_common(1)[0]
            size = next(r[name]["size"] for r in by_host.values() if r.get(name, {}).get("sha256") == digest)
            reference[name] = {"sha256": digest, "size": size, "source": f"{n} of {len(by_host)} hosts"}
    excluded: dict[str, list[str]] = {}
    for host, rep in by_host.items():
        for _path, name, _shape, _seed in models:
            got, want = rep.get(name, {}), reference.get(name)
            line = problem(host, name, got, want)
            if line:
                excluded.setdefault(host, []).append(line)
    return Verdict(reference=reference, hosts={h: dict(r) for h, r in by_host.items()}, excluded=excluded)


def problem(host: str, model: str, got: dict, want: dict | None) -> str | None:
    """One line when ``got`` is not the reference bytes (None when it is)."""
    path = got.get("path", "?")
    want_hash = want["sha256"] if want else "none (no host has the file)"
    if "sha256" not in got:
        return (f"host {host} excluded: model {model} at {path}: {got.get('error', 'not reported')} "
                f"(expected sha256 {want_hash})")
    if want is None or got["sha256"] != want["sha256"]:
        return (f"host {host} excluded: model {model} at {path}: sha256 {got['sha256']} ({got['size']} bytes) "
                f"differs from {want_hash} ({want['size'] if want else '?'} bytes, {want['source'] if want else ''})")
    return None
