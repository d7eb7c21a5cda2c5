"""Sweep specs: a TOML file validated into frozen dataclasses before anything runs.

A spec names models × engine settings × hosts × placement × backend. Any
``[sweep]`` setting may be a list; the run measures their cartesian product, like
llama-bench. Every problem (unknown key, wrong type, impossible value) is a
``SpecError`` that names the key and what is allowed.

Imports neither ray nor numba: validation runs in milliseconds.
"""
from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostprofiles.cpulist import parse_cpulist
from hostprofiles.errors import ProfileError
from orchestrator.errors import NumasweepError
from orchestrator.placement import ALIASES, MEM_POLICIES
from orchestrator.placement import POLICIES as PLACEMENT_POLICIES

CACHE_TYPES = ("f32", "f16", "q8_0")
K_REPACK = ("auto", "on", "off")
SHAPES = ("micro", "tiny", "small")  # engine.synth.SHAPES (not imported: it pulls in numba)
POLICIES = PLACEMENT_POLICIES + tuple(ALIASES)
BACKENDS = ("builtin", "external", "replay")
DEFAULT_STORE = "numasweep-results/numasweep.db"


class SpecError(NumasweepError):
    """The sweep spec is invalid; the message names the key and the allowed values."""


# -- records -----------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    path: str | None = None   # an existing GGUF file
    shape: str | None = None  # or a synthetic shape, generated and cached
    seed: int = 0

    @property
    def name(self) -> str:
        return Path(self.path).name if self.path else f"{self.shape}-seed{self.seed}"


@dataclass(frozen=True)
class EngineSettings:
    """One point of the settings matrix: what one engine invocation measures."""
    n_ctx: int
    ubatch: int
    tg: int
    threads: int | None          # None: the slot's thread count
    threads_batch: int | None    # None: same as threads
    type_k: str
    type_v: str
    flash_attn: bool
    k_repack: str
    rtr: bool


@dataclass(frozen=True)
class HostSelector:
    labels: tuple[tuple[str, str], ...] = ()  # Ray node labels that must all match
    profiles: tuple[str, ...] = ()            # host profile names; empty = any

    def matches(self, node_labels: dict, profile_name: str | None) -> bool:
        if any(node_labels.get(k) != v for k, v in self.labels):
            return False
        return not self.profiles or profile_name in self.profiles


@dataclass(frozen=True)
class PlacementSpec:
    policy: str = "per-node"
    smt: bool = False
    mem_policy: str | None = None   # None: the policy's default
    cpus: str | None = None         # explicit CPU list, policy "cpus" (alias "explicit")


@dataclass(frozen=True)
class BackendSpec:
    kind: str = "builtin"
    argv: tuple[str, ...] = ()   # external: argv template with {model} {threads} ... placeholders
    replay: str | None = None    # replay: recorded rows (JSONL or sweep-bench table); None = synthetic
    delay_s: float = 0.0         # replay: seconds per emitted row


@dataclass(frozen=True)
class SweepSpec:
    models: tuple[ModelSpec, ...]
    matrix: tuple[EngineSettings, ...]
    repetitions: int = 1
    seed: int = 0
    hosts: HostSelector = field(default_factory=HostSelector)
    placement: PlacementSpec = field(default_factory=PlacementSpec)
    backend: BackendSpec = field(default_factory=BackendSpec)
    store: str = DEFAULT_STORE
    label: str | None = None
    address: str | None = None   # Ray address; None = embedded local Ray
    source: dict = field(default_factory=dict, compare=False)  # the parsed TOML, stored with the run
    base: str = "."  # directory relative paths were resolved against (kept to resume)

    @classmethod
    def from_toml(cls, path: str | Path) -> "SweepSpec":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise SpecError(f"{path}: cannot read spec: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{path}: not valid TOML: {exc}") from None
        try:
            return cls.from_dict(data, base=path.resolve().parent)
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict, base: Path | None = None) -> "SweepSpec":
        return _parse(data, Path(base or Path.cwd()).resolve())

    def to_dict(self) -> dict:
        return self.source


# -- parsing -----------------------------------------------------------------
_TOP = ("label", "store", "model", "models", "sweep", "hosts", "placement", "backend", "ray")
_SWEEP = ("c", "ub", "tg", "threads", "threads_batch", "type_k", "type_v", "flash_attn",
          "k_repack", "rtr", "repetitions", "seed")


def _check_keys(table: Any, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(table, dict):
        raise SpecError(f"{where} must be a table, got {_tname(table)}")
    for key in table:
        if key not in allowed:
            raise SpecError(f"unknown key {_join(where, key)!r} (allowed: {', '.join(allowed)})")
    return table


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _tname(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(v), type(v).__name__)


def _scalar(value: Any, kind: type, key: str, choices: tuple | None = None, minimum: int | None = None):
    # bool is an int subclass: never accept true where a number is meant.
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        want = {int: "an integer", str: "a string", bool: "a boolean (true/false)", float: "a number"}[kind]
        extra = f" (allowed: {', '.join(map(str, choices))})" if choices else ""
        raise SpecError(f"{key} must be {want}{extra}, got {_tname(value)} {value!r}")
    if choices is not None and value not in choices:
        raise SpecError(f"{key} = {value!r} is not allowed (allowed: {', '.join(map(str, choices))})")
    if minimum is not None and value < minimum:
        raise SpecError(f"{key} = {value!r} is impossible: must be >= {minimum}")
    return value


def _values(table: dict, key: str, kind: type, default: Any, where: str, **kw) -> tuple:
    """A setting that may be one value or a list of values (one matrix axis)."""
    full = _join(where, key)
    raw = table.get(key, default)
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise SpecError(f"{full} is an empty list: give at least one value")
    return tuple(v if v is None else _scalar(v, kind, full, **kw) for v in items)


def _parse(data: dict, base: Path) -> SweepSpec:
    _check_keys(data, _TOP, "")
    label = data.get("label")
    if label is not None:
        _scalar(label, str, "label")
    store = _scalar(data.get("store", DEFAULT_STORE), str, "store")
    models = _models(data, base)

    sweep = _check_keys(data.get("sweep", {}), _SWEEP, "sweep")
    w = "sweep"
    axes = dict(
        n_ctx=_values(sweep, "c", int, 1024, w, minimum=1),
        ubatch=_values(sweep, "ub", int, 256, w, minimum=1),
        tg=_values(sweep, "tg", int, None, w, minimum=1),
        threads=_values(sweep, "threads", int, None, w, minimum=1),
        threads_batch=_values(sweep, "threads_batch", int, None, w, minimum=1),
        type_k=_values(sweep, "type_k", str, "f16", w, choices=CACHE_TYPES),
        type_v=_values(sweep, "type_v", str, "f16", w, choices=CACHE_TYPES),
        flash_attn=_values(sweep, "flash_attn", bool, True, w),
        k_repack=_values(sweep, "k_repack", str, "auto", w, choices=K_REPACK),
        rtr=_values(sweep, "rtr", bool, False, w),
    )
    matrix = []
    for combo in itertools.product(*axes.values()):
        s = dict(zip(axes, combo))
        if s["ubatch"] > s["n_ctx"]:
            raise SpecError(f"sweep.ub = {s['ubatch']} is impossible with sweep.c = {s['n_ctx']}: ub must be <= c")
        if s["tg"] is None:
            s["tg"] = max(1, s["ubatch"] // 4)  # llama-sweep-bench's default
        if s["type_v"] != "f16" and s["type_v"] != "f32" and not s["flash_attn"]:
            raise SpecError(f"sweep.type_v = {s['type_v']!r} needs sweep.flash_attn = true "
                            "(allowed without flash attention: f16, f32)")
        matrix.append(EngineSettings(**s))
    reps = _scalar(sweep.get("repetitions", 1), int, "sweep.repetitions", minimum=1)
    seed = _scalar(sweep.get("seed", 0), int, "sweep.seed", minimum=0)

    hosts_t = _check_keys(data.get("hosts", {}), ("labels", "profiles"), "hosts")
    labels = _check_keys(hosts_t.get("labels", {}), tuple(hosts_t.get("labels", {})), "hosts.labels")
    hosts = HostSelector(
        labels=tuple(sorted((k, _scalar(v, str, f"hosts.labels.{k}")) for k, v in labels.items())),
        profiles=_str_list(hosts_t.get("profiles", []), "hosts.profiles"),
    )

    pl = _check_keys(data.get("placement", {}), ("policy", "smt", "mem_policy", "cpus"), "placement")
    placement = PlacementSpec(
        policy=_scalar(pl.get("policy", "per-node"), str, "placement.policy", choices=POLICIES),
        smt=_scalar(pl.get("smt", False), bool, "placement.smt"),
        mem_policy=None if pl.get("mem_policy") is None
        else _scalar(pl["mem_policy"], str, "placement.mem_policy", choices=MEM_POLICIES),
        cpus=None if pl.get("cpus") is None else _scalar(pl["cpus"], str, "placement.cpus"),
    )
    if (ALIASES.get(placement.policy, placement.policy) == "cpus") != (placement.cpus is not None):
        raise SpecError("placement.cpus is required with placement.policy = 'cpus' and allowed only there")
    if placement.cpus is not None:
        try:
            parse_cpulist(placement.cpus)
        except ProfileError:
            raise SpecError(f"placement.cpus = {placement.cpus!r} is not a CPU list (like '0-3,8')") from None

    backend = _backend(data.get("backend", {}), base)
    ray_t = _check_keys(data.get("ray", {}), ("address",), "ray")
    address = None if ray_t.get("address") is None else _scalar(ray_t["address"], str, "ray.address")
    return SweepSpec(models=models, matrix=tuple(matrix), repetitions=reps, seed=seed, hosts=hosts,
                     placement=placement, backend=backend, store=store, label=label, address=address,
                     source=data, base=str(base))


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(_scalar(v, str, key) for v in items)


def _models(data: dict, base: Path) -> tuple[ModelSpec, ...]:
    if "model" in data and "models" in data:
        raise SpecError("give either [model] or [[models]], not both")
    raw = data.get("models", data.get("model", {"shape": "tiny"}))
    where = "models" if "models" in data else "model"
    tables = raw if isinstance(raw, list) else [raw]
    if not tables:
        raise SpecError(f"{where} is an empty list: give at least one model")
    out = []
    for i, t in enumerate(tables):
        w = f"{where}[{i}]" if isinstance(raw, list) else where
        _check_keys(t, ("path", "shape", "seed"), w)
        if ("path" in t) == ("shape" in t):
            raise SpecError(f"{w} needs exactly one of 'path' (a GGUF file) or 'shape' "
                            f"(allowed: {', '.join(SHAPES)})")
        if "path" in t:
            p = Path(_scalar(t["path"], str, f"{w}.path")).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                raise SpecError(f"{w}.path = {str(p)!r}: no such file")
            out.append(ModelSpec(path=str(p)))
        else:
            out.append(ModelSpec(shape=_scalar(t["shape"], str, f"{w}.shape", choices=SHAPES),
                                 seed=_scalar(t.get("seed", 0), int, f"{w}.seed", minimum=0)))
    return tuple(out)


def _backend(t: Any, base: Path) -> BackendSpec:
    _check_keys(t, ("kind", "argv", "replay", "delay_s"), "backend")
    kind = _scalar(t.get("kind", "builtin"), str, "backend.kind", choices=BACKENDS)
    argv = t.get("argv", [])
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise SpecError(f"backend.argv must be an array of strings, got {_tname(argv)}")
    if (kind == "external") != bool(argv):
        raise SpecError("backend.argv is required with backend.kind = 'external' and allowed only there")
    if argv:
        from orchestrator.backends.external import check_template
        try:
            check_template(argv)
        except ValueError as exc:
            raise SpecError(f"backend.argv: {exc}") from None
    replay = t.get("replay")
    if replay is not None:
        if kind != "replay":
            raise SpecError("backend.replay is allowed only with backend.kind = 'replay'")
        p = Path(_scalar(replay, str, "backend.replay")).expanduser()
        replay = str(p if p.is_absolute() else base / p)
        if not Path(replay).is_file():
            raise SpecError(f"backend.replay = {replay!r}: no such file")
    delay = _scalar(t.get("delay_s", 0.0), float, "backend.delay_s")
    if delay < 0:
        raise SpecError(f"backend.delay_s = {delay} is impossible: must be >= 0")
    return BackendSpec(kind=kind, argv=tuple(argv), replay=replay, delay_s=delay)
