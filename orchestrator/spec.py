"""Sweep specs: a TOML file validated into frozen dataclasses before anything runs.

A spec names models × engine settings × hosts × placement × backend. Any
``[sweep]`` setting may be a list; the run measures their cartesian product, like
llama-bench. Every problem (unknown key, wrong type, impossible value) is a
``SpecError`` that names the key and what is allowed.

Imports neither ray nor numba: validation runs in milliseconds.
"""
from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.options import BY_NAME, SETTINGS, SPEC_KEYS, OptionError, check_combination, effective_tg
from hostprofiles.cpulist import parse_cpulist
from hostprofiles.errors import ProfileError
from orchestrator.builds import FA_SYNTAXES, KINDS, BuildError, BuildSpec, check_fixed, check_template
from orchestrator.errors import NumasweepError
from orchestrator.placement import ALIASES, MEM_POLICIES
from orchestrator.placement import POLICIES as PLACEMENT_POLICIES

POLICIES = PLACEMENT_POLICIES + tuple(ALIASES)
DEFAULT_STORE = "numasweep-results/numasweep.db"
MAX_COMBINATIONS = 10_000  # settings combinations per spec: far above any real sweep
# The settings a run always decides (the model, the sweep grid, the slot's threads): every
# build must take them. Others count as set only when the spec names them.
PLANNED = ("c", "ub", "tg", "threads")


def shapes() -> tuple[str, ...]:
    """The engine's synthetic shapes (its registry, imported without numba)."""
    from engine.shapes import ALL_SHAPES
    return tuple(ALL_SHAPES)


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
    """One point of the settings matrix: every engine.options setting by name (nrep aside: the
    run's repetitions are processes). threads / threads_batch None = the slot's; tg resolved."""
    values: tuple[tuple[str, Any], ...]

    def __getitem__(self, name: str) -> Any:
        return dict(self.values)[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def with_values(self, **changes: Any) -> "EngineSettings":
        return EngineSettings(tuple((k, changes.get(k, v)) for k, v in self.values))

    def n_kv_grid(self) -> list[int]:
        """The N_KV of every timed row: sweep-bench's grid, every sweep_stride-th row."""
        v = self.as_dict()
        return list(range(0, v["c"], v["ub"]))[::v["sweep_stride"]]


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
class SweepSpec:
    models: tuple[ModelSpec, ...]
    matrix: tuple[EngineSettings, ...]
    builds: tuple[BuildSpec, ...] = (BuildSpec("builtin"),)
    repetitions: int = 1
    explicit: frozenset[str] = frozenset()   # settings the spec names ([sweep] keys)
    hosts: HostSelector = field(default_factory=HostSelector)
    placement: PlacementSpec = field(default_factory=PlacementSpec)
    store: str = DEFAULT_STORE
    label: str | None = None
    address: str | None = None   # Ray address; None = embedded local Ray
    source: dict = field(default_factory=dict, compare=False)  # the parsed TOML, stored with the run
    base: str = "."  # directory relative paths were resolved against (kept to resume)

    @classmethod
    def from_toml(cls, path: str | Path) -> "SweepSpec":
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise SpecError(f"{path}: cannot read spec: {exc.strerror}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise SpecError(f"{path}: not a TOML spec (not UTF-8 text)") from None
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{path}: not valid TOML: {exc}") from None
        except RecursionError:
            raise SpecError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
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
_SWEEP = tuple(SPEC_KEYS)
_BUILD_KEYS = ("name", "kind", "argv", "fixed", "fa_syntax", "replay", "delay_s")


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


def _scalar(value: Any, kind: type, key: str, choices: tuple | None = None, minimum: float | None = None):
    # bool is an int subclass: never accept true where a number is meant.
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        want = {int: "an integer", str: "a string", bool: "a boolean (true/false)", float: "a number"}[kind]
        extra = f" (allowed: {', '.join(map(str, choices))})" if choices else ""
        raise SpecError(f"{key} must be {want}{extra}, got {_tname(value)} {value!r}")
    if kind is float and not math.isfinite(value):
        raise SpecError(f"{key} = {value!r} is not a finite number")
    if choices is not None and value not in choices:
        raise SpecError(f"{key} = {value!r} is not allowed (allowed: {', '.join(map(str, choices))})")
    if minimum is not None and value < minimum:
        raise SpecError(f"{key} = {value!r} is impossible: must be >= {minimum}")
    return value


def _setting_values(sweep: dict, key: str) -> tuple:
    """A [sweep] setting: one value or (when the schema allows) a list of values (one matrix axis),
    each checked by its engine.options setting."""
    s = SPEC_KEYS[key]
    full = f"sweep.{key}"
    if key not in sweep:
        return (None,) if s.name in ("threads", "threads_batch") else (s.default,)
    raw = sweep[key]
    if isinstance(raw, list):
        if not s.sweepable:
            raise SpecError(f"{full} must be one value, not a list")
        if not raw:
            raise SpecError(f"{full} is an empty list: give at least one value")
        if len(set(map(repr, raw))) != len(raw):
            raise SpecError(f"{full} lists a value twice: {raw!r}")
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for v in items:
        if isinstance(v, float) and not math.isfinite(v):
            raise SpecError(f"{full} = {v!r} is not a finite number")
        if s.name in ("threads", "threads_batch", "tg") and isinstance(v, int) and v == 0:
            default = "ub/4" if s.name == "tg" else "the slot's CPUs"
            raise SpecError(f"{full} = 0 is impossible: must be >= 1 (leave it out for {default})")
        try:
            out.append(s.check(v))
        except OptionError as exc:
            raise SpecError(f"{full}: {exc.message}") from None
    return tuple(out)


def _matrix(sweep: dict) -> tuple[tuple[EngineSettings, ...], int]:
    axes = {s.name: _setting_values(sweep, s.key) for s in SETTINGS if s.key and s.name != "nrep"}
    reps = _setting_values(sweep, "repetitions")[0]
    size = math.prod(len(v) for v in axes.values())
    if size > MAX_COMBINATIONS:
        lists = ", ".join(f"{BY_NAME[k].key} ({len(v)})" for k, v in axes.items() if len(v) > 1)
        raise SpecError(f"sweep: {size} combinations of {lists} exceed the limit of {MAX_COMBINATIONS} "
                        f"(split the sweep into several specs)")
    matrix = []
    for combo in itertools.product(*axes.values()):
        v = dict(zip(axes, combo))
        try:
            check_combination(v)
        except OptionError as exc:
            key = BY_NAME[exc.setting].key
            raise SpecError(f"sweep.{key} = {v[exc.setting]!r}: {exc.message}") from None
        v["tg"] = effective_tg(v["ub"], v["tg"])
        matrix.append(EngineSettings(tuple(v.items())))
    return tuple(matrix), reps


def _parse(data: dict, base: Path) -> SweepSpec:
    _check_keys(data, _TOP, "")
    label = data.get("label")
    if label is not None:
        _scalar(label, str, "label")
    store = _scalar(data.get("store", DEFAULT_STORE), str, "store")
    models = _models(data, base)

    sweep = _check_keys(data.get("sweep", {}), _SWEEP, "sweep")
    matrix, reps = _matrix(sweep)
    explicit = frozenset(SPEC_KEYS[k].name for k in sweep if k != "repetitions") | frozenset(PLANNED)

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

    builds = _builds(data.get("backend", {}), base, explicit)
    ray_t = _check_keys(data.get("ray", {}), ("address",), "ray")
    address = None if ray_t.get("address") is None else _scalar(ray_t["address"], str, "ray.address")
    return SweepSpec(models=models, matrix=matrix, builds=builds, repetitions=reps, explicit=explicit,
                     hosts=hosts, placement=placement, store=store, label=label, address=address,
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
                            f"(allowed: {', '.join(shapes())})")
        if "path" in t:
            p = Path(_scalar(t["path"], str, f"{w}.path")).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                raise SpecError(f"{w}.path = {str(p)!r}: " + ("not a regular file" if p.exists() else "no such file"))
            out.append(ModelSpec(path=str(p)))
        else:
            out.append(ModelSpec(shape=_scalar(t["shape"], str, f"{w}.shape", choices=shapes()),
                                 seed=_scalar(t.get("seed", 0), int, f"{w}.seed", minimum=0)))
    return tuple(out)


def _builds(t: Any, base: Path, explicit: frozenset[str]) -> tuple[BuildSpec, ...]:
    """[backend]: one build (named after its kind unless named), or [[backend.builds]]."""
    _check_keys(t, _BUILD_KEYS + ("builds",), "backend")
    if "builds" in t:
        if set(t) - {"builds"}:
            raise SpecError("backend: give either [[backend.builds]] or the single-build keys, not both")
        tables = t["builds"]
        if not isinstance(tables, list) or not tables:
            raise SpecError("backend.builds must be a non-empty array of tables ([[backend.builds]])")
        builds = tuple(_build(b, base, f"backend.builds[{i}]", named=True) for i, b in enumerate(tables))
    else:
        builds = (_build(t, base, "backend", named=False),)
    names = [b.name for b in builds]
    if len(set(names)) != len(names):
        raise SpecError(f"backend.builds: build names must differ, got {names}")
    for b in builds:
        try:
            b.check_honest(explicit)
        except BuildError as exc:
            raise SpecError(str(exc)) from None
    return builds


def _build(t: Any, base: Path, where: str, named: bool) -> BuildSpec:
    _check_keys(t, _BUILD_KEYS, where)
    kind = _scalar(t.get("kind", "builtin"), str, f"{where}.kind", choices=KINDS)
    if named and "name" not in t:
        raise SpecError(f"{where}.name is required (it names the build in the store and the report)")
    name = _scalar(t.get("name", kind), str, f"{where}.name")
    if not name or len(name) > 64 or any(ch in name for ch in ",=\n"):
        raise SpecError(f"{where}.name = {name!r}: 1-64 characters, without ',', '=' or newlines")
    argv = t.get("argv", [])
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise SpecError(f"{where}.argv must be an array of strings, got {_tname(argv)}")
    if (kind == "external") != bool(argv):
        raise SpecError(f"{where}.argv is required with kind = 'external' and allowed only there")
    if argv:
        try:
            check_template(argv)
        except ValueError as exc:
            raise SpecError(f"{where}.argv: {exc}") from None
    fixed = t.get("fixed", {})
    if fixed and kind != "external":
        raise SpecError(f"{where}.fixed is allowed only with kind = 'external' (builtin applies every setting)")
    _check_keys(fixed, tuple(BY_NAME), f"{where}.fixed")
    try:
        fixed_t = check_fixed(name, fixed)
    except BuildError as exc:
        raise SpecError(str(exc)) from None
    fa_syntax = _scalar(t.get("fa_syntax", "value"), str, f"{where}.fa_syntax", choices=FA_SYNTAXES)
    replay = t.get("replay")
    if replay is not None:
        if kind != "replay":
            raise SpecError(f"{where}.replay is allowed only with kind = 'replay'")
        p = Path(_scalar(replay, str, f"{where}.replay")).expanduser()
        replay = str(p if p.is_absolute() else base / p)
        if not Path(replay).is_file():
            raise SpecError(f"{where}.replay = {replay!r}: no such file")
    delay = _scalar(t.get("delay_s", 0.0), float, f"{where}.delay_s", minimum=0.0)
    if delay > 3600:
        raise SpecError(f"{where}.delay_s = {delay} is too large: must be <= 3600 seconds")
    return BuildSpec(name=name, kind=kind, argv=tuple(argv), fixed=fixed_t, fa_syntax=fa_syntax, replay=replay,
                     delay_s=delay)
