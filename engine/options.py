"""The engine's settings: one schema from the ``bench`` flags to the stored settings key.

Every setting the engine and llama-sweep-bench take is declared once here: its type,
allowed values, default, CLI spellings (ik's short and long), the spec key and argv
placeholder (both the setting's name unless said otherwise), and whether it changes
the measurement (part of a point's identity) or is bookkeeping. Everything else is
derived from this table: ``numasweep bench``'s argparse, ``load_model``'s checks, the
spec's ``[sweep]`` keys and checks, the builtin backend's argv, the external backend's
placeholders, the stored settings and report labels.

No numba, numpy or gguf here: spec validation imports this and stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

CACHE_TYPES = ("f32", "f16", "q8_0")
K_REPACK_MODES = ("auto", "on", "off")
MLA_MODES = (0, 1, 2, 3)
# Upper bounds that keep a typo from allocating the machine away; far above any real run.
MAX_CTX = 1 << 21
MAX_THREADS = 4096


class OptionError(ValueError):
    """A setting has a value the engine cannot run; names the setting."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.message = message


@dataclass(frozen=True)
class Setting:
    name: str                    # canonical: spec key, placeholder and stored name
    kind: type                   # int | bool | str
    default: Any
    flags: tuple[str, ...]       # CLI spellings, ik's short one first
    help: str
    choices: tuple = ()
    minimum: int | None = None
    maximum: int | None = None
    identity: bool = True        # changes the measurement: part of the settings key
    sweepable: bool = True       # a spec [sweep] value may be a list
    spec_key: str | None = ""    # "" = name; None = not a [sweep] key
    placeholder: str | None = ""  # "" = name; None = no argv placeholder
    aliases: tuple[str, ...] = ()  # other names seen in stored data, imports and ik's JSONL
    planned: bool = False        # always decided by the plan (an external build must take it)

    @property
    def key(self) -> str | None:
        return self.name if self.spec_key == "" else self.spec_key

    @property
    def slot(self) -> str | None:
        return self.name if self.placeholder == "" else self.placeholder

    @property
    def flag(self) -> str:
        return self.flags[0] if self.flags else self.name

    def check(self, value: Any) -> Any:
        """The value if allowed, else OptionError saying what is allowed."""
        kind = self.kind
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            want = {int: "an integer", str: "a string", bool: "a boolean"}[kind]
            raise OptionError(self.name, f"must be {want}{self._allowed()}, got {value!r}")
        if self.choices and value not in self.choices:
            raise OptionError(self.name, f"{value!r} is not allowed{self._allowed()}")
        if self.minimum is not None and value < self.minimum:
            raise OptionError(self.name, f"{value!r} is impossible: must be >= {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise OptionError(self.name, f"{value!r} is too large: must be <= {self.maximum}")
        return value

    def _allowed(self) -> str:
        return f" (allowed: {', '.join(map(str, self.choices))})" if self.choices else ""


SETTINGS: tuple[Setting, ...] = (
    Setting("c", int, 4096, ("-c", "--ctx-size"), "sweep up to this KV depth (n_kv_max)",
            minimum=1, maximum=MAX_CTX, aliases=("n_ctx", "n_kv_max"), planned=True),
    Setting("ub", int, 512, ("-ub", "--ubatch-size"), "PP tokens per row (ubatch)",
            minimum=1, maximum=MAX_CTX, aliases=("ubatch", "n_ubatch"), planned=True),
    # No effect on a sweep row (PP is one ubatch), but llama-bench's pp tests split into -b batches.
    Setting("b", int, 2048, ("-b", "--batch-size"), "logical batch (>= -ub; no effect on a sweep row)",
            minimum=1, maximum=MAX_CTX, aliases=("batch", "n_batch")),
    Setting("tg", int, 0, ("-n", "--n-predict"), "TG tokens per row (0 = ub/4)",
            minimum=0, maximum=MAX_CTX, aliases=("n_predict", "n_gen"), planned=True),
    Setting("threads", int, 0, ("-t", "--threads"), "TG threads (0 = every CPU the process may use)",
            minimum=0, maximum=MAX_THREADS, aliases=("n_threads",), planned=True),
    Setting("threads_batch", int, 0, ("-tb", "--threads-batch"), "PP threads (0 = -t)",
            minimum=0, maximum=MAX_THREADS, aliases=("n_threads_batch",)),
    Setting("type_k", str, "f16", ("-ctk", "--cache-type-k"), "K cache type", choices=CACHE_TYPES),
    Setting("type_v", str, "f16", ("-ctv", "--cache-type-v"), "V cache type", choices=CACHE_TYPES),
    Setting("flash_attn", bool, True, ("-fa", "--flash-attn"),
            "flash attention: on|off (auto = on; a bare -fa = on)", placeholder="fa"),
    Setting("k_repack", str, "auto", ("--k-repack",),
            "flash attention reads a q8_0 K cache as Q8_0_R8 for PP: auto = ik's rule "
            "(>= 8 tokens, K rows % 8 == 0), on = every PP batch, off = never", choices=K_REPACK_MODES),
    Setting("rtr", bool, False, ("-rtr", "--run-time-repack"),
            "repack Q8_0 weight matrices (not token_embd) to Q8_0_R8 at load (no mmap)"),
    Setting("fmoe", bool, False, ("-fmoe", "--fused-moe"),
            "fused MoE expert kernels (gate+up+SwiGLU in one pass, then down)", aliases=("fused_moe",)),
    Setting("mla", int, 0, ("-mla", "--mla-use"),
            "deepseek2 attention: 0 decompress K/V from c^KV, 1/2 absorbed, 3 absorbed for TG + "
            "decompressed for PP", choices=MLA_MODES, aliases=("mla_attn",)),
    Setting("amb", int, 0, ("-amb", "--attention-max-batch"),
            "cap the MLA attention scratch per head group at this many MiB (0 = no cap)",
            minimum=0, maximum=1 << 20, aliases=("attn_max_batch",)),
    Setting("no_mmap", bool, False, ("--no-mmap",),
            "copy the weights into memory at load instead of reading the file mapping"),
    Setting("seed", int, 42, ("-s", "--seed"), "token-id stream seed (the same stream every run)",
            minimum=0, maximum=2**63 - 1),
    Setting("nrep", int, 1, ("-nrep", "--n-repetitions"), "measure every row N times",
            minimum=1, maximum=10_000, identity=False, sweepable=False, spec_key="repetitions"),
    Setting("sweep_stride", int, 1, ("--sweep-stride",), "time every Nth row only",
            minimum=1, maximum=MAX_CTX, identity=False, sweepable=False),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
_ALIAS: dict[str, str] = {a: s.name for s in SETTINGS for a in s.aliases}
IDENTITY = tuple(s.name for s in SETTINGS if s.identity)
SPEC_KEYS: dict[str, Setting] = {s.key: s for s in SETTINGS if s.key}
PLACEHOLDERS: dict[str, Setting] = {s.slot: s for s in SETTINGS if s.slot}

# Flags of ik_llama.cpp / llama.cpp that this engine does not implement (value-taking ones
# map to True). Declared so that `-ngl 99` is one clear line, not argparse reading "-n gl".
UNSUPPORTED_FLAGS: dict[str, bool] = {
    "-ngl": True, "--gpu-layers": True, "--n-gpu-layers": True, "-mmp": True, "--mmap": True,
    "-ot": True, "--override-tensor": True, "-sm": True, "--split-mode": True, "-mg": True,
    "--main-gpu": True, "-ts": True, "--tensor-split": True, "-nkvo": False, "--no-kv-offload": False,
    "-ger": False, "--grouped-expert-routing": False, "-ser": True, "--smart-expert-reduction": True,
    "-khad": False, "--k-cache-hadamard": False, "-no-fmoe": False, "--no-fused-moe": False,
    "-no-fa": False, "--no-flash-attn": False, "-cb": False, "--cont-batching": False,
    "-wb": False, "--warmup-batch": False, "--sweep-memory": False, "-ctx": True, "-muge": False,
}


def canonical_name(key: str) -> str:
    """The schema name for a setting name, alias or spec key (unknown names unchanged)."""
    if key in BY_NAME:
        return key
    if key in _ALIAS:
        return _ALIAS[key]
    s = SPEC_KEYS.get(key)
    return s.name if s else key


def parse_flash(value: str | bool | int | None) -> bool:
    """ik's -fa values: on|off|auto|1|0 (auto = on, as ik's CPU path decides on)."""
    if isinstance(value, bool):
        return value
    if value is None:
        return True
    v = str(value).lower()
    if v in ("1", "on", "true", "yes", "auto"):
        return True
    if v in ("0", "off", "false", "no"):
        return False
    raise OptionError("flash_attn", f"expected on|off|auto, got {value!r}")


def check_value(name: str, value: Any) -> Any:
    return BY_NAME[name].check(value)


def effective_tg(ub: int, tg: int) -> int:
    """llama-sweep-bench's -n default: ub/4 tokens (at least 1)."""
    return tg if tg > 0 else max(1, ub // 4)


def check_combination(v: Mapping[str, Any]) -> None:
    """Rules between settings, for the engine CLI, load_model and the spec alike.

    ``v`` maps setting names to values; absent names are not checked.
    """
    c, ub = v.get("c"), v.get("ub")
    if c is not None and ub is not None:
        if ub > c:
            raise OptionError("ub", f"{ub} is larger than c = {c}: ub must be <= c")
        if c % ub:
            raise OptionError("c", f"{c} is not a multiple of ub = {ub} (the sweep runs rows of ub tokens "
                                   f"up to c; try c = {max(ub, c // ub * ub)})")
    if ub is not None and v.get("b") is not None and v["b"] < ub:
        raise OptionError("b", f"{v['b']} is smaller than ub = {ub}: b must be >= ub")
    if ub is not None and v.get("tg") is not None and effective_tg(ub, v["tg"]) > ub:
        raise OptionError("tg", f"{v['tg']} TG tokens exceed ub = {ub} (the KV cache would overflow at the "
                                f"last row): tg must be <= ub")
    if v.get("type_v") not in (None, "f16", "f32") and v.get("flash_attn") is False:
        raise OptionError("type_v", f"{v['type_v']!r} needs flash_attn on (allowed without flash "
                                    f"attention: f16, f32)")


@dataclass(frozen=True)
class EngineOptions:
    """What ``load_model`` applies: the model-level settings of the schema, checked."""
    n_ctx: int = 4096
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = True
    n_threads: int = 0          # 0 = all CPUs numba may use
    n_threads_batch: int = 0
    fused_moe: bool = False     # -fmoe (engine.moe); no effect without experts
    mla: int = 0                # -mla 0..3 (engine.mla); deepseek2 only
    amb: int = 0                # -amb MiB attention scratch cap per head group (0 = no cap)
    no_mmap: bool = False       # --no-mmap: copy the weights out of the file mapping
    k_repack: str = "auto"      # --k-repack: q8_0 K read as Q8_0_R8 for PP (engine.q8_0_r8)
    rtr: bool = False           # -rtr: Q8_0 weights repacked to Q8_0_R8 at load

    def settings(self) -> dict[str, Any]:
        """These options under their schema names."""
        return {FIELD_SETTING[f.name]: getattr(self, f.name) for f in fields(self)}

    def validate(self, max_threads: int | None = None) -> "EngineOptions":
        """Each value by its schema setting, then the rules between them; threads against
        ``max_threads`` (the CPUs this process may use) when given."""
        values = self.settings()
        for name, value in values.items():
            check_value(name, value)
        check_combination(values)
        if max_threads is not None:
            for name in ("threads", "threads_batch"):
                if values[name] > max_threads:
                    raise OptionError(name, f"{values[name]} threads requested but only {max_threads} "
                                            f"CPUs are available")
        return self


# EngineOptions field -> schema name (the engine's internal spellings predate the schema).
FIELD_SETTING = {"n_ctx": "c", "type_k": "type_k", "type_v": "type_v", "flash_attn": "flash_attn",
                 "n_threads": "threads", "n_threads_batch": "threads_batch", "fused_moe": "fmoe",
                 "mla": "mla", "amb": "amb", "no_mmap": "no_mmap", "k_repack": "k_repack", "rtr": "rtr"}


def identity_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a settings dict that names the measurement (bookkeeping dropped)."""
    return {k: v for k, v in values.items() if BY_NAME.get(k) is None or BY_NAME[k].identity}


def describe(values: Mapping[str, Any], names: Iterable[str] | None = None) -> str:
    """Settings in words for labels and progress lines: ``t=88 tb=128 ctk=q8_0 k_repack=off``."""
    short = {"threads": "t", "threads_batch": "tb", "type_k": "ctk", "type_v": "ctv", "flash_attn": "fa"}
    out = []
    for k in names if names is not None else values:
        if k not in values:
            continue
        v = values[k]
        if isinstance(v, bool):
            v = int(v)
        out.append(f"{short.get(k, k)}={'?' if v is None else v}")
    return " ".join(out)


def option_flag(name: str) -> str:
    """The CLI flag that spells a setting, for engine error messages (``-ctk: ...``)."""
    s = BY_NAME.get(name)
    return s.flag if s else name


KV_TYPES = CACHE_TYPES  # the engine's name for the cache types (engine.kvcache)
