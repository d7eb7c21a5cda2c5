"""Bounds on what ``numasweep import`` reads: file size, line length, rows, SQL statements and cells.

The defaults are far above what llama-bench / llama-sweep-bench write (a 32k-context
sweep log with its model dump is ~30 KiB, a big llama-bench SQL dump ~100 KiB) and
far below what would hurt the machine; ``numasweep import --limit NAME=VALUE``
raises one. Every refusal names the file (and line) and the limit to raise.
"""
from __future__ import annotations

import dataclasses
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ImportFormatError

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
_UNITS = {"": 1, "b": 1, "k": KIB, "kb": KIB, "kib": KIB, "m": MIB, "mb": MIB, "mib": MIB,
          "g": GIB, "gb": GIB, "gib": GIB}


@dataclass(frozen=True)
class ImportLimits:
    file: int = 64 * MIB        # bytes per file
    line: int = 1 * MIB         # bytes per line
    rows: int = 100_000         # measured rows per file (each sample of a llama-bench JSON test is one)
    statements: int = 100_000   # SQL statements per dump (llama-bench writes one INSERT per test)
    cell: int = 64 * KIB        # bytes per SQL literal (samples_ns of 1000 repetitions is ~12 KiB)

    def with_overrides(self, items: list[str] | tuple[str, ...]) -> "ImportLimits":
        """Apply ``NAME=VALUE`` overrides (``file=256MiB``, ``rows=1e6`` is not a number: ``rows=1000000``)."""
        out = self
        for item in items:
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or name not in LIMIT_NAMES:
                raise ImportFormatError(f"--limit {item!r}: want NAME=VALUE with NAME one of {', '.join(LIMIT_NAMES)}")
            out = dataclasses.replace(out, **{name: parse_size(value, f"--limit {name}")})
        return out

    def refuse(self, name: str, what: str) -> ImportFormatError:
        return ImportFormatError(f"{what} (limit {name}={getattr(self, name)}; raise it with --limit {name}=N)")


LIMIT_NAMES = tuple(f.name for f in dataclasses.fields(ImportLimits))
DEFAULT_LIMITS = ImportLimits()


def parse_size(text: str, what: str) -> int:
    """``65536``, ``64KiB``, ``64M``, ``1GiB`` -> bytes (binary units); a positive integer."""
    m = re.fullmatch(r"\s*(\d{1,15})\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ImportFormatError(f"{what} = {text!r}: want a positive integer, optionally with KiB, MiB or GiB")
    value = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise ImportFormatError(f"{what} = {text!r}: must be >= 1")
    return value


def read_bounded(path: str | Path, limits: ImportLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of a regular file no larger than ``limits.file`` whose lines fit ``limits.line``.

    Opened non-blocking and checked with fstat before reading: a FIFO, a device or a
    directory is refused at once (reading one could block forever or never end).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ImportFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImportFormatError(f"{path}: is a directory (give the output files)")
        if not stat.S_ISREG(st.st_mode):
            raise ImportFormatError(f"{path}: not a regular file (a FIFO, device or socket); save the output to a file")
        if st.st_size > limits.file:
            raise limits.refuse("file", f"{path}: {st.st_size} bytes is too large to import")
        chunks, left = [], limits.file + 1  # a file that grew since fstat is still bounded
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 24))):
            chunks.append(chunk)
            left -= len(chunk)
        raw = b"".join(chunks)
    except OSError as exc:
        raise ImportFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > limits.file:
        raise limits.refuse("file", f"{path}: more than {limits.file} bytes (it grew while being read)")
    check_lines(raw, str(path), limits)
    return raw


def check_lines(raw: bytes, name: str, limits: ImportLimits = DEFAULT_LIMITS) -> None:
    """Refuse a line longer than ``limits.line`` bytes, naming its number."""
    if len(raw) <= limits.line:
        return
    start, n = 0, 1
    while True:
        nl = raw.find(b"\n", start)
        end = len(raw) if nl < 0 else nl
        if end - start > limits.line:
            raise limits.refuse("line", f"{name}:{n}: line of {end - start} bytes is too long to import")
        if nl < 0:
            return
        start, n = nl + 1, n + 1
