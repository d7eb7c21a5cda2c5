"""``numasweep import``: parse files and write each as one run, in one transaction.

A file is parsed completely before anything is written, then its run, host and
points are committed together: a refused file leaves the store untouched. The
file's sha256 is the run's content_hash, so importing it again adds nothing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ImportFormatError
from orchestrator.importers.detect import parse_text, read_text
from orchestrator.importers.parsed import ParsedLog
from orchestrator.store import Store


@dataclass(frozen=True)
class ImportResult:
    path: str
    run_id: int
    source: str
    n_points: int
    duplicate: bool  # True: this exact file was imported before (as run_id); nothing added

    def describe(self) -> str:
        if self.duplicate:
            return f"{self.path}: already imported as run {self.run_id}; nothing added"
        return f"{self.path}: run {self.run_id} ({self.source}), {self.n_points} points"


def load_host_profile(name: str) -> tuple[dict, str | None]:
    """(profile dict, fingerprint) for ``--host-profile``: a saved profile name or a JSON file."""
    import hostprofiles

    path = Path(name)
    try:
        if path.suffix == ".json" or path.exists():
            profile = hostprofiles.HostProfile.loads(path.read_text())
        else:
            profile = hostprofiles.load_profile(name)
    except OSError as exc:
        raise ImportFormatError(f"{name}: cannot read host profile: {exc.strerror or exc}") from None
    except hostprofiles.ProfileError as exc:
        raise ImportFormatError(f"--host-profile {name}: {exc}") from None
    return profile.to_json(), profile.fingerprint


@dataclass(frozen=True)
class _Prepared:
    path: str
    digest: str
    parsed: ParsedLog | None  # None: already in the store


def _prepare(store: Store, path: str | Path) -> _Prepared:
    raw, text = read_text(path)
    digest = hashlib.sha256(raw).hexdigest()
    if store.run_by_hash(digest) is not None:
        return _Prepared(str(path), digest, None)
    if not text.strip():
        raise ImportFormatError(f"{path}: empty file")
    parsed = parse_text(text, str(path))
    parsed.points(str(path))  # validate every row now, before anything is written
    return _Prepared(str(path), digest, parsed)


def _write(store: Store, prep: _Prepared, label: str | None, profile: tuple[dict, str | None] | None,
           host_name: str | None) -> ImportResult:
    if prep.parsed is None:
        existing = store.run_by_hash(prep.digest)
        return ImportResult(prep.path, existing["id"], existing["source"], 0, duplicate=True)
    parsed = prep.parsed
    with store.transaction():
        host_id = None
        if profile is not None:
            host_id = store.upsert_host(fingerprint=profile[1], profile=profile[0], name=host_name)
        run_id = store.create_run(
            settings=parsed.settings, label=label or Path(prep.path).stem, source=parsed.source, status="ok",
            meta=parsed.meta, source_file=str(Path(prep.path).resolve()), content_hash=prep.digest,
        )
        n = store.add_points(run_id, parsed.points(prep.path, host_id=host_id))
    return ImportResult(prep.path, run_id, parsed.source, n, duplicate=False)


def import_files(store: Store, paths, *, label: str | None = None, host_profile: str | None = None) -> list:
    """Import files, one run and one transaction each. Every file is parsed first:
    if any is refused, nothing at all is written. Result bundles (``numasweep bundle``)
    are recognised by content and become the run they hold."""
    from orchestrator.bundle import Bundle, import_bundle, is_bundle, read_bundle

    profile = load_host_profile(host_profile) if host_profile else None
    host_name = Path(host_profile).stem if host_profile else None
    prepared, seen = [], set()
    for p in paths:
        if is_bundle(p):
            if label or host_profile:
                raise ImportFormatError(f"{p}: a result bundle carries its own label and host facts "
                                        "(--label / --host-profile do not apply to it)")
            prepared.append(read_bundle(p))
            continue
        prep = _prepare(store, p)
        if prep.digest in seen:  # the same file named twice: import it once
            prep = _Prepared(prep.path, prep.digest, None)
        seen.add(prep.digest)
        prepared.append(prep)
    return [import_bundle(store, prep) if isinstance(prep, Bundle) else _write(store, prep, label, profile, host_name)
            for prep in prepared]


def import_file(store: Store, path: str | Path, *, label: str | None = None,
                host_profile: str | None = None) -> ImportResult:
    return import_files(store, [path], label=label, host_profile=host_profile)[0]
