"""Linux CPU-list strings ("0-3,8,10-11"), as in sysfs cpulist files and numactl."""
from __future__ import annotations

from collections.abc import Iterable

from .errors import ProfileError


def parse_cpulist(text: str) -> tuple[int, ...]:
    """'0-3,8' -> (0, 1, 2, 3, 8); empty string -> (). Sorted, no duplicates."""
    out: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.update(range(int(lo), int(hi) + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ProfileError(f"bad CPU list {text.strip()!r}: {part!r} is not N or N-M") from None
    return tuple(sorted(out))


def format_cpulist(cpus: Iterable[int]) -> str:
    """(0, 1, 2, 3, 8) -> '0-3,8' (the kernel's own format; order is not kept)."""
    ids = sorted(set(cpus))
    runs: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        runs.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(runs)
