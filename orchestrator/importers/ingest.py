"""``numasweep import``: parse files and write each as one run; all of them or nothing.

Two passes, so that at most one file's rows are in memory at a time and nothing is
written (not even a new store file) unless every file is good: ``plan_import``
parses and validates each file and keeps only its identity; ``ImportPlan.write``
parses each again and writes it, all in one transaction. A run's content_hash is
the sha256 of the parsed content in canonical JSON (source, settings, metadata,
rows), not of the bytes: the same data again (another name, a trailing newline,
CRLF) adds nothing. Stores written before this hashed the bytes; both are looked up.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ImportFormatError, StoreError
from orchestrator.importers.detect import parse_text, read_text
from orchestrator.importers.limits import DEFAULT_LIMITS, MIB, ImportLimits, read_bounded
from orchestrator.importers.parsed import ParsedLog
from orchestrator.point import canonical_json
from orchestrator.store import Store


@dataclass(frozen=True)
class ImportResult:
    path: str
    run_id: int
    source: str
    n_points: int
    duplicate: bool  # True: the same data was imported before (as run_id); nothing added

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
            raw = read_bounded(path, ImportLimits(file=16 * MIB, line=16 * MIB))
            profile = hostprofiles.HostProfile.loads(raw.decode("utf-8"))
        else:
            profile = hostprofiles.load_profile(name)
    except ImportFormatError as exc:
        raise ImportFormatError(f"--host-profile {exc}") from None
    except (hostprofiles.ProfileError, ValueError, TypeError, KeyError, AttributeError) as exc:
        # ValueError: not UTF-8 / not JSON; the others: JSON that is not a profile's shape
        raise ImportFormatError(f"--host-profile {name}: not a host profile: {str(exc).splitlines()[0][:200]}") from None
    return profile.to_json(), profile.fingerprint


@dataclass(frozen=True)
class CheckedFile:
    """A file that parsed and validated completely; its rows are not kept."""
    path: str
    digest: str       # sha256 of the parsed content's canonical JSON
    raw_digest: str   # sha256 of the bytes (what older stores recorded)


def _parse(path: str, limits: ImportLimits) -> tuple[ParsedLog, str, str]:
    """(parsed, content digest, bytes digest); every row validated."""
    raw, text = read_text(path, limits)
    raw_digest = hashlib.sha256(raw).hexdigest()
    del raw
    if not text.strip():
        raise ImportFormatError(f"{path}: empty file")
    parsed = parse_text(text, path, limits)
    del text
    parsed.points(path)  # validate every row now, before anything is written
    try:
        canonical = canonical_json({"source": parsed.source, "settings": parsed.settings, "meta": parsed.meta,
                                    "rows": list(parsed.rows)}, "imported content")
    except StoreError as exc:
        raise ImportFormatError(f"{path}: {exc}") from None
    return parsed, hashlib.sha256(canonical.encode()).hexdigest(), raw_digest


def check_file(path: str | Path, limits: ImportLimits = DEFAULT_LIMITS) -> CheckedFile:
    _, digest, raw_digest = _parse(str(path), limits)
    return CheckedFile(str(path), digest, raw_digest)


@dataclass(frozen=True)
class ImportPlan:
    """Files that all passed ``check_file`` (or bundles read whole), and the host profile to attach."""
    files: tuple  # CheckedFile | orchestrator.bundle.Bundle
    profile: tuple[dict, str | None] | None
    host_name: str | None
    limits: ImportLimits = DEFAULT_LIMITS

    def write(self, store: Store, label: str | None = None) -> list[ImportResult]:
        """One run per new file, all in one transaction; a file seen before adds nothing."""
        out: list[ImportResult] = []
        done: dict[str, ImportResult] = {}
        from orchestrator.bundle import Bundle, import_bundle

        with store.transaction():
            for f in self.files:
                if isinstance(f, Bundle):
                    if label:
                        raise ImportFormatError(f"{f.path}: a result bundle carries its own label (--label does "
                                                "not apply to it)")
                    out.append(import_bundle(store, f))
                    continue
                prior = done.get(f.digest) or self._existing(store, f)
                if prior is not None:
                    out.append(ImportResult(f.path, prior.run_id, prior.source, 0, duplicate=True))
                    continue
                parsed, digest, _ = _parse(f.path, self.limits)
                if digest != f.digest:
                    raise ImportFormatError(f"{f.path}: changed while being imported; nothing was written")
                res = done[digest] = self._write_one(store, f, parsed, label)
                out.append(res)
        return out

    @staticmethod
    def _existing(store: Store, f: CheckedFile) -> ImportResult | None:
        run = store.run_by_hash(f.digest) or store.run_by_hash(f.raw_digest)
        return None if run is None else ImportResult(f.path, run["id"], run["source"], 0, duplicate=True)

    def _write_one(self, store: Store, f: CheckedFile, parsed: ParsedLog, label: str | None) -> ImportResult:
        host_id = None
        if self.profile is not None:
            host_id = store.upsert_host(fingerprint=self.profile[1], profile=self.profile[0], name=self.host_name)
        run_id = store.create_run(
            settings=parsed.settings, label=label or Path(f.path).stem, source=parsed.source, status="ok",
            meta=parsed.meta, source_file=str(Path(f.path).resolve()), content_hash=f.digest,
        )
        n = store.add_points(run_id, parsed.points(f.path, host_id=host_id))
        return ImportResult(f.path, run_id, parsed.source, n, duplicate=False)


def plan_import(paths, *, host_profile: str | None = None, limits: ImportLimits = DEFAULT_LIMITS) -> ImportPlan:
    """Check the host profile and every file without touching any store. Result bundles
    (``numasweep bundle``) are recognised by content and become the run they hold."""
    from orchestrator.bundle import is_bundle, read_bundle

    profile = load_host_profile(host_profile) if host_profile else None
    host_name = Path(host_profile).stem if host_profile else None
    files: list = []
    for p in paths:
        if is_bundle(p):
            if host_profile:
                raise ImportFormatError(f"{p}: a result bundle carries its own host facts (--host-profile does "
                                        "not apply to it)")
            files.append(read_bundle(p))
        else:
            files.append(check_file(p, limits))
    return ImportPlan(tuple(files), profile, host_name, limits)


def import_files(store: Store, paths, *, label: str | None = None, host_profile: str | None = None,
                 limits: ImportLimits = DEFAULT_LIMITS) -> list:
    """Import files, one run each, in one transaction: if any is refused, nothing is written."""
    return plan_import(paths, host_profile=host_profile, limits=limits).write(store, label)


def import_file(store: Store, path: str | Path, *, label: str | None = None,
                host_profile: str | None = None, limits: ImportLimits = DEFAULT_LIMITS) -> ImportResult:
    return import_files(store, [path], label=label, host_profile=host_profile, limits=limits)[0]
