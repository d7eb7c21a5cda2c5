"""Saved profiles: JSON files shipped in hostprofiles/profiles/ plus the user's own.

User profiles live in $NUMASWEEP_PROFILES or ~/.config/numasweep/profiles; a user
profile with a shipped profile's name shadows it. Every function takes the
directories explicitly too, so tests never read or write the user's home.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import ProfileError
from .profile import HostProfile

SHIPPED_DIR = Path(__file__).with_name("profiles")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*$")


def user_dir() -> Path:
    env = os.environ.get("NUMASWEEP_PROFILES")
    return Path(env) if env else Path.home() / ".config/numasweep/profiles"


def _dirs(dirs: Sequence[str | os.PathLike] | None) -> list[Path]:
    return [Path(d) for d in dirs] if dirs is not None else [user_dir(), SHIPPED_DIR]


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ProfileError(f"bad profile name {name!r}: use lowercase letters, digits, '.', '-', '_'")
    return name


def list_profiles(dirs: Sequence[str | os.PathLike] | None = None) -> list[str]:
    """Names of the saved profiles, sorted."""
    names = set()
    for d in _dirs(dirs):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.json") if _NAME.match(p.stem))
    return sorted(names)


def profile_path(name: str, dirs: Sequence[str | os.PathLike] | None = None) -> Path:
    check_name(name)
    for d in _dirs(dirs):
        path = d / f"{name}.json"
        if path.is_file():
            return path
    known = ", ".join(list_profiles(dirs)) or "none"
    raise ProfileError(f"no saved host profile {name!r} (known: {known})")


def load_profile(name: str, dirs: Sequence[str | os.PathLike] | None = None) -> HostProfile:
    """Load a saved profile. It describes some machine, not this run: simulated=True."""
    path = profile_path(name, dirs)
    try:
        profile = HostProfile.loads(path.read_text())
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None
    return dataclasses.replace(profile, simulated=True)


def save_profile(profile: HostProfile, name: str, dir: str | os.PathLike | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``profile`` as NAME.json (its name set to NAME) and return the path."""
    check_name(name)
    d = Path(dir) if dir is not None else user_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.json"
    if path.exists() and not overwrite:
        raise ProfileError(f"{path} exists (pass overwrite/--force to replace it)")
    path.write_text(dataclasses.replace(profile, name=name).dumps())
    return path
