"""One measured sweep row and repetition: an immutable record checked on construction.

A ``Point`` is what every producer (the engine's JSONL rows, the pinned worker,
the importers) hands to the results store. Its engine settings are kept as
canonical JSON plus a short hash (``settings_key``) so that "the same point" can
be recognised across processes, resumes and re-imports.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from engine.options import BY_NAME, canonical_name
from orchestrator.errors import StoreError

# Per-row measurements a Point doesn't store because they derive from its fields (the
# repack scratch high-water mark is the running max of repack_scratch_mib); kept as
# settings they would give every row its own settings_key and break resume's identity.
DERIVED_ROW_KEYS = frozenset({"repack_scratch_hwm_mib"})
# Flags outside the engine schema that importers meet: ik prints 0/1, others true/false.
EXTRA_BOOL_SETTINGS = ("use_mmap", "no_kv_offload", "embeddings", "cpu_strict", "use_thp")


# One encoder: json.dumps with non-default options builds a new encoder per call (ingest hot path).
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_json(value: Any, what: str = "value") -> str:
    """Sorted-key compact JSON; the one spelling used for hashing and storage."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} is not JSON-serialisable: {exc}") from None


def settings_key_of(settings_json: str) -> str:
    return hashlib.sha256(settings_json.encode()).hexdigest()[:16]


def normalize_settings(settings: dict) -> dict:
    """Settings under engine.options names: aliases (n_ctx, n_ubatch, fused_moe, ...) renamed,
    flags as booleans, the schema's bookkeeping settings (nrep, sweep_stride) dropped. Two
    spellings of one setting with different values are refused."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = canonical_name(key)
        setting = BY_NAME.get(name)
        if setting is not None and not setting.identity:
            continue
        if (setting is not None and setting.kind is bool or name in EXTRA_BOOL_SETTINGS) \
                and isinstance(value, int):  # bool is an int too
            value = bool(value)
        if name in out and out[name] != value:
            raise StoreError(f"settings give {name} twice with different values: {out[name]!r} and {value!r} "
                             f"(as {key!r})")
        out[name] = value
    return out


def settings_key_for(settings: dict) -> str:
    """The settings_key a Point with these settings gets (computed without building one)."""
    return settings_key_of(canonical_json(normalize_settings(settings), "point field settings"))


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StoreError(f"point field {name} must be a non-negative integer, got {value!r}")


def _check_float(name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise StoreError(f"point field {name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class Point:
    n_kv: int
    pp: int            # tokens processed in the PP batch (0: no PP phase, e.g. llama-bench tg test)
    tg: int            # tokens generated in the TG phase (0: no TG phase)
    t_pp: float        # seconds
    speed_pp: float    # tokens/s
    t_tg: float        # seconds
    speed_tg: float    # tokens/s
    rep: int = 0
    host_id: int | None = None
    slot: str | None = None
    placement: dict | None = None
    settings: dict = field(default_factory=dict)
    rss_hwm_mib: float | None = None
    repack_scratch_mib: float | None = None
    verified_cpus: str | None = None
    verified_mems: str | None = None
    noise: float | None = None  # fraction of slot CPU time used by other processes during the row
    simulated: bool = False
    weight_bytes: int | None = None  # weight bytes one TG token reads (the engine reports it)
    build: str | None = None     # the build that measured it (None: an import without builds)
    build_id: int | None = None  # its identity in the store's builds table
    # Derived in __post_init__; not constructor arguments.
    settings_json: str = field(default="", init=False, repr=False, compare=False)
    settings_key: str = field(default="", init=False, repr=False, compare=False)
    placement_json: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("n_kv", "pp", "tg", "rep"):
            _check_int(name, getattr(self, name))
        for name in ("t_pp", "speed_pp", "t_tg", "speed_tg"):
            _check_float(name, getattr(self, name))
        for name in ("rss_hwm_mib", "repack_scratch_mib", "noise"):
            _check_float(name, getattr(self, name), optional=True)
        if self.host_id is not None and (isinstance(self.host_id, bool) or not isinstance(self.host_id, int)):
            raise StoreError(f"point field host_id must be an integer or None, got {self.host_id!r}")
        if self.weight_bytes is not None:
            _check_int("weight_bytes", self.weight_bytes)
        if self.build_id is not None and (isinstance(self.build_id, bool) or not isinstance(self.build_id, int)):
            raise StoreError(f"point field build_id must be an integer or None, got {self.build_id!r}")
        for name in ("slot", "verified_cpus", "verified_mems", "build"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise StoreError(f"point field {name} must be a string or None, got {value!r}")
        if not isinstance(self.settings, dict):
            raise StoreError(f"point field settings must be a dict, got {type(self.settings).__name__}")
        if self.placement is not None and not isinstance(self.placement, dict):
            raise StoreError(f"point field placement must be a dict or None, got {type(self.placement).__name__}")
        if not isinstance(self.simulated, bool):
            raise StoreError(f"point field simulated must be a bool, got {self.simulated!r}")
        settings = normalize_settings(self.settings)
        object.__setattr__(self, "settings", settings)  # private copy: callers may reuse their dict
        sj = canonical_json(settings, "point field settings")
        object.__setattr__(self, "settings_json", sj)
        object.__setattr__(self, "settings_key", settings_key_of(sj))
        if self.placement is not None:
            object.__setattr__(self, "placement_json", canonical_json(self.placement, "point field placement"))

    def key(self) -> tuple:
        """Identity within a run: the tuples ``Store.done_keys`` returns."""
        return point_key(self.host_id, self.slot, self.build, self.settings_key, self.rep, self.n_kv, self.pp,
                         self.tg)

    @classmethod
    def from_sweep_row(cls, row: dict, **extra: Any) -> "Point":
        """Build from one engine / llama-sweep-bench JSONL row dict.

        ``extra`` sets Point fields (host_id, slot, placement, rep, noise, ...). With
        ``extra["settings"]`` (what a job applied) those are exactly the point's settings: the
        row's echo (the worker checked it against them) and any other key it prints are left
        out, so a job's points share one settings key, known before it runs (resume).
        """
        if not isinstance(row, dict):
            raise StoreError(f"sweep row must be a JSON object, got {type(row).__name__}")
        names = _init_names(cls)
        extra = dict(extra)
        given = extra.pop("settings", None)
        kwargs: dict[str, Any] = {}
        settings: dict[str, Any] = {}
        for key, value in row.items():
            if key in DERIVED_ROW_KEYS:
                continue
            if key in names and key != "settings":
                kwargs[key] = value
            elif given is None:
                settings[key] = value
        missing = [k for k in ("n_kv", "pp", "tg", "t_pp", "speed_pp", "t_tg", "speed_tg") if k not in kwargs]
        if missing:
            raise StoreError(f"sweep row lacks key(s) {', '.join(missing)}")
        if given is not None:
            settings = given
        unknown = set(extra) - names
        if unknown:
            raise StoreError(f"unknown Point field(s): {', '.join(sorted(unknown))}")
        kwargs.update(extra)
        return cls(settings=settings, **kwargs)

    def as_row(self) -> dict:
        """Sweep-bench JSONL keys for this point (the inverse of from_sweep_row's measurements)."""
        return {
            "n_kv": self.n_kv, "pp": self.pp, "tg": self.tg, "t_pp": self.t_pp,
            "speed_pp": self.speed_pp, "t_tg": self.t_tg, "speed_tg": self.speed_tg,
            "rss_hwm_mib": self.rss_hwm_mib, "repack_scratch_mib": self.repack_scratch_mib,
            "rep": self.rep, "weight_bytes": self.weight_bytes,
        }


_INIT_NAMES: dict[type, frozenset[str]] = {}


def _init_names(cls: type) -> frozenset[str]:
    """Constructor field names, computed once per class (from_sweep_row is on the ingest hot path)."""
    if cls not in _INIT_NAMES:
        _INIT_NAMES[cls] = frozenset(f.name for f in fields(cls) if f.init)
    return _INIT_NAMES[cls]


def point_key(host_id, slot, build, settings_key, rep, n_kv, pp, tg) -> tuple:
    """The uniqueness key of a point inside one run (None host/slot/build compare equal)."""
    return (host_id, slot, build, settings_key, rep, n_kv, pp, tg)
