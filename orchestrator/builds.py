"""Builds: the engines a spec compares, and what each one really applies.

A build is one engine a run measures: ``builtin`` (numasweep's engine), ``external``
(a binary from an argv template, e.g. ik_llama.cpp's llama-sweep-bench) or ``replay``.
For an external build every identity setting of ``engine.options`` is in exactly one of
three states:

- *passed*: its placeholder is in the argv; stored as rendered;
- *fixed*: the build declares the value its binary cannot change (``fixed = {...}``);
- *unknown*: neither; stored as null, never as numasweep's default.

A setting the spec sets (or the plan always decides: model, c, ub, tg, threads) that a
build neither passes nor fixes is refused before anything runs. Imports neither ray nor
numba.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from engine.options import BY_NAME, IDENTITY, PLACEHOLDERS, OptionError

KINDS = ("builtin", "external", "replay")
FA_SYNTAXES = ("value", "flag")
# {model} is the one placeholder that is not an engine setting.
ALL_PLACEHOLDERS = ("model",) + tuple(PLACEHOLDERS)
# Bool settings render as whole arguments: the flag, or nothing (flash_attn: see fa_syntax).
SWITCHES = {slot: s for slot, s in PLACEHOLDERS.items() if s.kind is bool}
# Checked for honesty: what names the measurement, plus sweep_stride (it decides which rows exist).
HONEST = IDENTITY + ("sweep_stride",)


class BuildError(ValueError):
    """A build's declaration is inconsistent; the message names the build and the key."""


@dataclass(frozen=True)
class BuildSpec:
    name: str
    kind: str = "builtin"
    argv: tuple[str, ...] = ()                 # external: the template
    fixed: tuple[tuple[str, Any], ...] = ()    # (setting, value) the binary cannot change
    fa_syntax: str = "value"                   # {fa}: "-fa on|off" (value) or "-fa"/nothing (flag)
    replay: str | None = None                  # replay: recorded rows; None = synthetic
    delay_s: float = 0.0                       # replay: seconds per row

    @property
    def passed(self) -> frozenset[str]:
        """Settings this build is told: all for builtin/replay; the placeholders for external."""
        if self.kind != "external":
            return frozenset(BY_NAME)
        return frozenset(PLACEHOLDERS[p].name for p in placeholders_in(self.argv) if p in PLACEHOLDERS)

    def state(self, name: str) -> str:
        if name in self.passed:
            return "passed"
        return "fixed" if name in dict(self.fixed) else "unknown"

    def applied(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The stored settings of a job with these planned ``values``: passed as given, fixed as
        declared, unknown as None. Only identity settings are stored."""
        fixed = dict(self.fixed)
        out = {}
        for name in IDENTITY:
            state = self.state(name)
            out[name] = values.get(name) if state == "passed" else fixed.get(name)
        return out

    def check_honest(self, explicit: Iterable[str]) -> None:
        """BuildError for the first setting the spec sets that this build neither passes nor fixes."""
        if self.kind != "external":
            return
        if "model" not in placeholders_in(self.argv):
            raise BuildError(f"build {self.name!r}: argv has no {{model}}: the binary would not load the "
                             "spec's model")
        for name in explicit:
            if name in HONEST and self.state(name) == "unknown":
                slot = BY_NAME[name].slot
                raise BuildError(
                    f"build {self.name!r}: the spec sets {name!r} but the argv has no {{{slot}}} and the build "
                    f"does not declare it fixed: its runs could not apply it (add {{{slot}}} to argv or "
                    f"fixed = {{ {name} = ... }})")


def placeholders_in(argv: Iterable[str]) -> set[str]:
    found = set()
    for arg in argv:
        for _, field, _, _ in string.Formatter().parse(arg):
            if field is not None:
                found.add(field)
    return found


def check_template(argv: Iterable[str]) -> None:
    """ValueError naming a bad placeholder: unknown names, and switches inside a longer argument."""
    for arg in argv:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(arg) if f is not None]
        except ValueError as exc:
            raise ValueError(f"{arg!r}: {exc}") from None
        for f in fields:
            if f not in ALL_PLACEHOLDERS:
                raise ValueError(f"unknown placeholder {{{f}}} in {arg!r} "
                                 f"(allowed: {', '.join('{' + p + '}' for p in ALL_PLACEHOLDERS)})")
            if f in SWITCHES and arg != "{" + f + "}":
                raise ValueError(f"{{{f}}} must be an argument of its own (it becomes a flag or nothing), "
                                 f"got {arg!r}")


def check_fixed(build: str, fixed: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    out = []
    for name, value in fixed.items():
        s = BY_NAME.get(name)
        if s is None or name not in HONEST:
            raise BuildError(f"build {build!r}: fixed.{name} is not an engine setting that names a measurement "
                             f"(allowed: {', '.join(HONEST)})")
        try:
            out.append((name, s.check(value)))
        except OptionError as exc:
            raise BuildError(f"build {build!r}: fixed.{name}: {exc.message}") from None
    return tuple(sorted(out))


def render(build: BuildSpec, values: Mapping[str, Any], model: str) -> list[str]:
    """The external argv for one job: placeholders replaced, switches rendered or dropped.
    ``{nrep}`` is always 1: the orchestrator runs every repetition as its own process."""
    flat = {"model": model}
    for slot, s in PLACEHOLDERS.items():
        v = 1 if s.name == "nrep" else values.get(s.name)
        flat[slot] = "" if v is None else str(int(v) if isinstance(v, bool) else v)
    out: list[str] = []
    for arg in build.argv:
        slot = arg[1:-1] if arg.startswith("{") and arg.endswith("}") else None
        if slot == "fa":
            on = bool(values.get("flash_attn"))
            out += (["-fa", "on" if on else "off"] if build.fa_syntax == "value" else (["-fa"] if on else []))
        elif slot in SWITCHES:
            if values.get(SWITCHES[slot].name):
                out.append(SWITCHES[slot].flag)
        else:
            out.append(arg.format(**flat))
    return out


# -- identity ------------------------------------------------------------------
def builtin_identity() -> dict:
    """numasweep's own engine: package version and the checkout's git commit."""
    return {"kind": "builtin", "version": package_version(), "git_commit": git_commit()}


def external_identity(argv0: str) -> dict:
    """The binary an external build runs: resolved path, size, sha256 and its --version line."""
    path = shutil.which(argv0) or argv0
    p = Path(path).resolve()
    try:
        size = p.stat().st_size
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise BuildError(f"{argv0}: cannot read the build's binary: {exc.strerror}") from None
    return {"kind": "external", "path": str(p), "size": size, "sha256": digest.hexdigest(),
            "version": _version_line(str(p))}


def _version_line(path: str) -> str | None:
    if not os.access(path, os.X_OK):
        return None
    try:
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (res.stdout + "\n" + res.stderr).splitlines():
        if "version" in line.lower():
            return line.strip()[:200]
    return None


def identity_of(build: BuildSpec) -> dict:
    if build.kind == "external":
        return {**external_identity(build.argv[0]), "argv": list(build.argv), "fixed": dict(build.fixed),
                "fa_syntax": build.fa_syntax}
    if build.kind == "replay":
        return {"kind": "replay", "replay": build.replay}
    return builtin_identity()


def git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("numasweep")
    except PackageNotFoundError:  # running from a checkout that is not installed
        return None

