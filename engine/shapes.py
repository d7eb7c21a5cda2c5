"""Synthetic model shapes: the dataclasses and the name -> shape table (no numba, numpy or gguf).

``engine.synth`` writes a GGUF for a shape; this module only says which shapes exist and
whether a shape (with overrides) is consistent, so that spec validation can list and
check them quickly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from engine.errors import EngineError

WTYPES = ("q8_0", "f16", "f32")
DENSE_ARCHS = ("llama", "qwen2", "qwen3")


@dataclass(frozen=True)
class Shape:
    """llama (NORM RoPE), qwen2 (q/k/v biases, NEOX) or qwen3 (per-head q/k RMSNorm, NEOX)."""

    dim: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    arch: str = "llama"
    ctx_train: int = 32768
    rope_base: float = 10000.0
    head_dim: int = 0          # 0 = dim / heads (qwen3 and gemma3 models may differ)

    @property
    def hd(self) -> int:
        return self.head_dim or self.dim // self.heads


@dataclass(frozen=True)
class MoEShape:
    """qwen2moe (shared expert, q/k/v bias, NEOX) or, with arch="llama", mixtral (no shared expert)."""

    dim: int
    layers: int
    heads: int
    kv_heads: int
    experts: int
    experts_used: int
    ffn_exp: int
    ffn_shexp: int
    vocab: int
    arch: str = "qwen2moe"
    ctx_train: int = 32768
    rope_base: float = 1000000.0


@dataclass(frozen=True)
class DeepSeek2Shape:
    """deepseek2: MLA (q/kv LoRA ranks, nope/rope split), leading dense blocks, sigmoid routing."""

    dim: int
    layers: int
    dense_layers: int      # leading_dense_block_count
    heads: int
    q_lora: int            # 0 = plain attn_q (DeepSeek-V2-Lite style)
    kv_lora: int
    nope: int              # key_length - rope
    rope: int              # rope.dimension_count
    v_dim: int             # value_length
    ffn: int               # dense FFN
    experts: int
    experts_used: int
    shared: int            # expert_shared_count
    ffn_exp: int
    vocab: int
    weights_scale: float = 2.5
    gating: str = "sigmoid"
    probs_bias: bool = True
    yarn_factor: float = 40.0
    yarn_orig_ctx: int = 4096
    ctx_train: int = 163840
    rope_base: float = 10000.0


@dataclass(frozen=True)
class Gemma3Shape:
    """gemma3: q/k norms, post-attention/FFN norms, GeGLU, local layers with a sliding window
    and every ``swa_pattern``-th layer global; head_dim need not be dim/heads."""

    dim: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    sliding_window: int
    swa_pattern: int = 6       # written only when it is not llama.cpp's default of 6
    ctx_train: int = 32768
    rope_base: float = 1000000.0
    rope_base_swa: float = 10000.0


SHAPES: dict[str, Shape] = {
    # ~60 MB Q8_0: the embedded default and the CLI end-to-end tests.
    "tiny": Shape(dim=512, layers=8, heads=8, kv_heads=8, ffn=1408, vocab=32000),
    # ~0.85B params, ~0.9 GB Q8_0: the benchmark model.
    "small": Shape(dim=2048, layers=16, heads=16, kv_heads=4, ffn=5632, vocab=32000),
    # a few MB: unit tests against the float64 reference.
    "micro": Shape(dim=128, layers=2, heads=4, kv_heads=2, ffn=256, vocab=512),
    # Qwen3's block in miniature: per-head q/k norms, no biases, NEOX, head_dim 128 > dim/heads.
    "qwen3-tiny": Shape(dim=256, layers=2, heads=4, kv_heads=2, ffn=512, vocab=1024, arch="qwen3",
                        rope_base=1000000.0, head_dim=128),
}
MOE_SHAPES: dict[str, MoEShape] = {
    # a few MB, generated in well under a second: tests and the smoke benchmark.
    "moe-tiny": MoEShape(dim=256, layers=2, heads=4, kv_heads=2, experts=8, experts_used=2,
                         ffn_exp=128, ffn_shexp=256, vocab=1024),
}
DEEPSEEK2_SHAPES: dict[str, DeepSeek2Shape] = {
    # DeepSeek-V3's structure in miniature: 1 dense + 2 MoE blocks, MLA 128 + 32 rope, 1 shared expert.
    "deepseek2-tiny": DeepSeek2Shape(dim=256, layers=3, dense_layers=1, heads=4, q_lora=128, kv_lora=128,
                                     nope=32, rope=32, v_dim=32, ffn=512, experts=8, experts_used=3,
                                     shared=1, ffn_exp=128, vocab=1024),
    # ~1.0 GB Q8_0 (~0.99B params): the benchmark model; V3's 512 + 64 c^KV row, 128 nope, 128 v.
    "deepseek2-small": DeepSeek2Shape(dim=2048, layers=8, dense_layers=1, heads=16, q_lora=512, kv_lora=512,
                                      nope=128, rope=64, v_dim=128, ffn=5632, experts=16, experts_used=4,
                                      shared=1, ffn_exp=1024, vocab=32000),
}
GEMMA3_SHAPES: dict[str, Gemma3Shape] = {
    # Gemma 3 270M's structure in miniature (1 KV head, head_dim > dim/heads, window 32 so that
    # tests cross it): 6 layers, the last one global.
    "gemma3-tiny": Gemma3Shape(dim=256, layers=6, heads=4, kv_heads=1, head_dim=128, ffn=512, vocab=1024,
                               sliding_window=32),
}
_TABLES = (SHAPES, MOE_SHAPES, DEEPSEEK2_SHAPES, GEMMA3_SHAPES)
ALL_SHAPES = tuple(name for table in _TABLES for name in table)


def find_shape(name: str):
    """The shape called name (any family)."""
    for table in _TABLES:
        if name in table:
            return table[name]
    raise EngineError(f"--shape: unknown shape {name!r} (allowed: {', '.join(ALL_SHAPES)})")


def _bad(kind: str, s, why: str) -> EngineError:
    return EngineError(f"make-model: inconsistent {kind}shape {asdict(s)} ({why})")


def resolve_shape(shape, **overrides):
    """A checked shape: a name or a shape object, with non-None overrides of its fields applied."""
    base = find_shape(shape) if isinstance(shape, str) else shape
    fields = base.__dataclass_fields__
    if isinstance(base, Shape):
        unknown = [k for k, v in overrides.items() if v is not None and k not in fields]
        if unknown:
            raise EngineError(f"make-model: {', '.join(unknown)} do not apply to shape {shape!r}")
    s = replace(base, **{k: v for k, v in overrides.items() if v is not None and k in fields})
    if isinstance(s, Shape):
        if (not s.head_dim and s.dim % s.heads) or s.hd % 32 or s.heads % s.kv_heads or s.ffn % 32 or s.dim % 32:
            raise _bad("", s, "dim/heads (or head_dim) must be a multiple of 32, heads a multiple of kv-heads, "
                              "dim and ffn multiples of 32")
        if s.arch not in DENSE_ARCHS:
            raise EngineError(f"--arch: unknown architecture {s.arch!r} (allowed: {', '.join(DENSE_ARCHS)})")
    elif isinstance(s, MoEShape):
        hd = s.dim // s.heads
        if s.dim % s.heads or hd % 32 or s.heads % s.kv_heads or s.ffn_exp % 32 or s.ffn_shexp % 32 \
                or not 0 < s.experts_used <= s.experts or s.arch not in ("qwen2moe", "llama"):
            raise _bad("MoE ", s, "dims must be multiples of 32, arch qwen2moe or llama")
    elif isinstance(s, DeepSeek2Shape):
        if any(v % 32 for v in (s.dim, s.kv_lora, s.nope, s.rope, s.v_dim, s.ffn, s.ffn_exp, s.q_lora)) \
                or not 0 <= s.dense_layers <= s.layers or not 0 < s.experts_used <= s.experts \
                or s.gating not in ("softmax", "sigmoid"):
            raise _bad("deepseek2 ", s, "dims must be multiples of 32")
    elif isinstance(s, Gemma3Shape):
        if any(v % 32 for v in (s.dim, s.head_dim, s.ffn)) or s.heads % s.kv_heads or s.sliding_window <= 0 \
                or s.swa_pattern <= 0:
            raise _bad("gemma3 ", s, "dims must be multiples of 32")
    return s
