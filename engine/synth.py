"""Synthetic GGUF models: real format, random weights, deterministic from a seed.

Benchmarks need real shapes, not trained weights. Weights are generated directly
as Q8_0 blocks (random int8 quants in [-127, 127], fp16 scales chosen so each
weight has std ~ 1/sqrt(n_in), which keeps activations O(1) through the layers).
A minimal llama-style tokenizer section makes the file loadable by other tools.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from gguf import (ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter, LlamaFileType, RopeScalingType,
                  TokenType)

from engine.errors import EngineError


@dataclass(frozen=True)
class Shape:
    dim: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    arch: str = "llama"
    ctx_train: int = 32768
    rope_base: float = 10000.0


SHAPES: dict[str, Shape] = {
    # ~60 MB Q8_0: the embedded default and the CLI end-to-end tests.
    "tiny": Shape(dim=512, layers=8, heads=8, kv_heads=8, ffn=1408, vocab=32000),
    # ~0.85B params, ~0.9 GB Q8_0: the benchmark model.
    "small": Shape(dim=2048, layers=16, heads=16, kv_heads=4, ffn=5632, vocab=32000),
    # a few MB: unit tests against the float64 reference.
    "micro": Shape(dim=128, layers=2, heads=4, kv_heads=2, ffn=256, vocab=512),
}
WTYPES = ("q8_0", "f16", "f32")
_QUANT_STD = float(np.sqrt(np.mean(np.arange(-127, 128, dtype=np.float64) ** 2)))


def _q8_0_blocks(rng: np.random.Generator, n_out: int, n_in: int, std: float) -> np.ndarray:
    # (n_out, n_in/32*34) u8: per block fp16 d then 32 int8 quants
    nb = n_in // 32
    qs = rng.integers(-127, 128, size=(n_out, nb, 32), dtype=np.int8)
    d = (std / _QUANT_STD * rng.uniform(0.5, 1.5, size=(n_out, nb, 1))).astype(np.float16)
    return np.concatenate([d.view(np.uint8), qs.view(np.uint8)], axis=2).reshape(n_out, nb * 34)


def _matrix(writer: GGUFWriter, rng, name: str, n_out: int, n_in: int, wtype: str, std: float) -> None:
    if wtype == "q8_0":
        writer.add_tensor(name, _q8_0_blocks(rng, n_out, n_in, std), raw_dtype=GGMLQuantizationType.Q8_0)
    else:
        w = (rng.standard_normal((n_out, n_in), dtype=np.float32) * std)
        writer.add_tensor(name, w.astype(np.float16 if wtype == "f16" else np.float32))


def resolve_shape(shape: str | Shape, **overrides) -> Shape:
    if isinstance(shape, Shape):
        base = shape
    elif shape in SHAPES:
        base = SHAPES[shape]
    else:
        raise EngineError(f"--shape: unknown shape {shape!r} (allowed: {', '.join(ALL_SHAPES)})")
    over = {k: v for k, v in overrides.items() if v is not None}
    s = replace(base, **over)
    if s.dim % s.heads or s.heads % s.kv_heads or (s.dim // s.heads) % 32 or s.ffn % 32 or s.dim % 32:
        raise EngineError(f"make-model: inconsistent shape {asdict(s)} (dim/heads must be a multiple of 32, "
                          "heads a multiple of kv-heads, dim and ffn multiples of 32)")
    if s.arch not in ("llama", "qwen2"):
        raise EngineError(f"--arch: unknown architecture {s.arch!r} (allowed: llama, qwen2)")
    return s


def make_model(path: str | os.PathLike, shape: str | Shape = "tiny", *, seed: int = 0, wtype: str = "q8_0",
               tied_output: bool = False, **overrides) -> Path:
    """Write a llama/qwen2 GGUF with random weights for a named shape; return its path.

    MoE shapes (MOE_SHAPES: qwen2moe/mixtral), DeepSeek-2 shapes (DEEPSEEK2_SHAPES) and Gemma 3
    shapes (GEMMA3_SHAPES) are dispatched on the shape name to make_moe_model /
    make_deepseek2_model / make_gemma3_model.
    """
    if wtype not in WTYPES:
        raise EngineError(f"--wtype: unknown weight type {wtype!r} (allowed: {', '.join(WTYPES)})")
    if isinstance(shape, MoEShape) or shape in MOE_SHAPES:
        return make_moe_model(path, shape, seed=seed, wtype=wtype, tied_output=tied_output, **overrides)
    if isinstance(shape, DeepSeek2Shape) or shape in DEEPSEEK2_SHAPES:
        return make_deepseek2_model(path, shape, seed=seed, wtype=wtype, tied_output=tied_output, **overrides)
    if isinstance(shape, Gemma3Shape) or shape in GEMMA3_SHAPES:
        return make_gemma3_model(path, shape, seed=seed, wtype=wtype, **overrides)
    s = resolve_shape(shape, **overrides)
    name = shape if isinstance(shape, str) else "custom"
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    hd = s.dim // s.heads
    w = GGUFWriter(str(tmp), s.arch)
    w.add_name(f"numasweep-{name}-{wtype}-seed{seed}")
    w.add_block_count(s.layers)
    w.add_context_length(s.ctx_train)
    w.add_embedding_length(s.dim)
    w.add_feed_forward_length(s.ffn)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(s.rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s.vocab)
    w.add_file_type({"q8_0": LlamaFileType.MOSTLY_Q8_0, "f16": LlamaFileType.MOSTLY_F16,
                     "f32": LlamaFileType.ALL_F32}[wtype])
    specials = ["<unk>", "<s>", "</s>"]
    tokens = (specials + [f"<0x{i:02X}>" for i in range(256)] + [f"tok{i}" for i in range(s.vocab)])[:s.vocab]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * s.vocab)
    w.add_token_types([TokenType.CONTROL if t in specials else TokenType.NORMAL for t in tokens])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    _matrix(w, rng, "token_embd.weight", s.vocab, s.dim, wtype, 1.0)
    for i in range(s.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(s.dim))
        _matrix(w, rng, p + "attn_q.weight", s.heads * hd, s.dim, wtype, s.dim ** -0.5)
        _matrix(w, rng, p + "attn_k.weight", s.kv_heads * hd, s.dim, wtype, s.dim ** -0.5)
        _matrix(w, rng, p + "attn_v.weight", s.kv_heads * hd, s.dim, wtype, s.dim ** -0.5)
        if s.arch == "qwen2":
            for b, n in (("attn_q.bias", s.heads * hd), ("attn_k.bias", s.kv_heads * hd),
                         ("attn_v.bias", s.kv_heads * hd)):
                w.add_tensor(p + b, (0.1 * rng.standard_normal(n)).astype(np.float32))
        _matrix(w, rng, p + "attn_output.weight", s.dim, s.heads * hd, wtype, (s.heads * hd) ** -0.5)
        w.add_tensor(p + "ffn_norm.weight", norm(s.dim))
        _matrix(w, rng, p + "ffn_gate.weight", s.ffn, s.dim, wtype, s.dim ** -0.5)
        _matrix(w, rng, p + "ffn_up.weight", s.ffn, s.dim, wtype, s.dim ** -0.5)
        _matrix(w, rng, p + "ffn_down.weight", s.dim, s.ffn, wtype, s.ffn ** -0.5)
    w.add_tensor("output_norm.weight", norm(s.dim))
    if not tied_output:
        _matrix(w, rng, "output.weight", s.vocab, s.dim, wtype, s.dim ** -0.5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)  # never leave a half-written model under the final name
    return path


# -- MoE and DeepSeek-2 shapes (engine.moe_model, engine.deepseek2) ----------------------

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


@dataclass(frozen=True)
class Gemma3Shape:
    """gemma3: q/k norms, post-attention/FFN norms, GeGLU, local layers with a sliding window
    and every ``swa_pattern``-th layer global (engine.gemma3); head_dim need not be dim/heads."""

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


GEMMA3_SHAPES: dict[str, Gemma3Shape] = {
    # Gemma 3 270M's structure in miniature (1 KV head, head_dim > dim/heads, window 32 so that
    # tests cross it): 6 layers, the last one global.
    "gemma3-tiny": Gemma3Shape(dim=256, layers=6, heads=4, kv_heads=1, head_dim=128, ffn=512, vocab=1024,
                               sliding_window=32),
}
ALL_SHAPES = tuple(SHAPES) + tuple(MOE_SHAPES) + tuple(DEEPSEEK2_SHAPES) + tuple(GEMMA3_SHAPES)


def _start_writer(tmp: Path, arch: str, name: str, layers: int, ctx: int, dim: int, heads: int,
                  vocab: int, wtype: str) -> GGUFWriter:
    w = GGUFWriter(str(tmp), arch)
    w.add_name(name)
    w.add_block_count(layers)
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_head_count(heads)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(vocab)
    w.add_file_type({"q8_0": LlamaFileType.MOSTLY_Q8_0, "f16": LlamaFileType.MOSTLY_F16,
                     "f32": LlamaFileType.ALL_F32}[wtype])
    specials = ["<unk>", "<s>", "</s>"]
    tokens = (specials + [f"<0x{i:02X}>" for i in range(256)] + [f"tok{i}" for i in range(vocab)])[:vocab]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([TokenType.CONTROL if t in specials else TokenType.NORMAL for t in tokens])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    return w


def _experts(writer: GGUFWriter, rng, name: str, n_expert: int, n_out: int, n_in: int, wtype: str,
             std: float) -> None:
    # numpy (n_expert, n_out, row) -> ggml [n_in, n_out, n_expert]
    if wtype == "q8_0":
        blocks = _q8_0_blocks(rng, n_expert * n_out, n_in, std).reshape(n_expert, n_out, -1)
        writer.add_tensor(name, blocks, raw_dtype=GGMLQuantizationType.Q8_0)
    else:
        a = rng.standard_normal((n_expert, n_out, n_in), dtype=np.float32) * std
        writer.add_tensor(name, a.astype(np.float16 if wtype == "f16" else np.float32))


def _finish_writer(w: GGUFWriter, tmp: Path, path: Path) -> Path:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def _moe_ffn_tensors(w, rng, p: str, dim: int, experts: int, ffn_exp: int, wtype: str) -> None:
    # router in f32 like llama.cpp's converters keep small 2-D tensors; logits of O(1) spread
    w.add_tensor(p + "ffn_gate_inp.weight", (rng.standard_normal((experts, dim)) * 2 * dim ** -0.5)
                 .astype(np.float32))
    _experts(w, rng, p + "ffn_gate_exps.weight", experts, ffn_exp, dim, wtype, dim ** -0.5)
    _experts(w, rng, p + "ffn_up_exps.weight", experts, ffn_exp, dim, wtype, dim ** -0.5)
    _experts(w, rng, p + "ffn_down_exps.weight", experts, dim, ffn_exp, wtype, ffn_exp ** -0.5)


def _resolve(table: dict, shape, overrides: dict):
    base = table[shape] if isinstance(shape, str) else shape
    fields = base.__dataclass_fields__
    return replace(base, **{k: v for k, v in overrides.items() if v is not None and k in fields})


def make_moe_model(path: str | os.PathLike, shape: str | MoEShape = "moe-tiny", *, seed: int = 0,
                   wtype: str = "q8_0", tied_output: bool = False, **overrides) -> Path:
    """Write a qwen2moe (or, arch="llama", mixtral-style) GGUF with random weights."""
    s = _resolve(MOE_SHAPES, shape, overrides)
    hd = s.dim // s.heads
    if s.dim % s.heads or hd % 32 or s.heads % s.kv_heads or s.ffn_exp % 32 or s.ffn_shexp % 32 \
            or not 0 < s.experts_used <= s.experts or s.arch not in ("qwen2moe", "llama"):
        raise EngineError(f"make-model: inconsistent MoE shape {asdict(s)}")
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    name = shape if isinstance(shape, str) else "custom"
    w = _start_writer(tmp, s.arch, f"numasweep-{name}-{wtype}-seed{seed}", s.layers, s.ctx_train, s.dim,
                      s.heads, s.vocab, wtype)
    w.add_head_count_kv(s.kv_heads)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(s.rope_base)
    w.add_feed_forward_length(s.ffn_exp)
    w.add_expert_count(s.experts)
    w.add_expert_used_count(s.experts_used)
    w.add_expert_feed_forward_length(s.ffn_exp)
    shared = s.arch == "qwen2moe" and s.ffn_shexp > 0
    if shared:
        w.add_expert_shared_feed_forward_length(s.ffn_shexp)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    _matrix(w, rng, "token_embd.weight", s.vocab, s.dim, wtype, 1.0)
    for i in range(s.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(s.dim))
        _matrix(w, rng, p + "attn_q.weight", s.heads * hd, s.dim, wtype, s.dim ** -0.5)
        _matrix(w, rng, p + "attn_k.weight", s.kv_heads * hd, s.dim, wtype, s.dim ** -0.5)
        _matrix(w, rng, p + "attn_v.weight", s.kv_heads * hd, s.dim, wtype, s.dim ** -0.5)
        if s.arch == "qwen2moe":
            for b, n in (("attn_q.bias", s.heads * hd), ("attn_k.bias", s.kv_heads * hd),
                         ("attn_v.bias", s.kv_heads * hd)):
                w.add_tensor(p + b, (0.1 * rng.standard_normal(n)).astype(np.float32))
        _matrix(w, rng, p + "attn_output.weight", s.dim, s.heads * hd, wtype, (s.heads * hd) ** -0.5)
        w.add_tensor(p + "ffn_norm.weight", norm(s.dim))
        _moe_ffn_tensors(w, rng, p, s.dim, s.experts, s.ffn_exp, wtype)
        if shared:
            w.add_tensor(p + "ffn_gate_inp_shexp.weight", (rng.standard_normal(s.dim) * s.dim ** -0.5)
                         .astype(np.float32))
            _matrix(w, rng, p + "ffn_gate_shexp.weight", s.ffn_shexp, s.dim, wtype, s.dim ** -0.5)
            _matrix(w, rng, p + "ffn_up_shexp.weight", s.ffn_shexp, s.dim, wtype, s.dim ** -0.5)
            _matrix(w, rng, p + "ffn_down_shexp.weight", s.dim, s.ffn_shexp, wtype, s.ffn_shexp ** -0.5)
    w.add_tensor("output_norm.weight", norm(s.dim))
    if not tied_output:
        _matrix(w, rng, "output.weight", s.vocab, s.dim, wtype, s.dim ** -0.5)
    return _finish_writer(w, tmp, path)


def make_deepseek2_model(path: str | os.PathLike, shape: str | DeepSeek2Shape = "deepseek2-tiny", *,
                         seed: int = 0, wtype: str = "q8_0", tied_output: bool = False,
                         split_kv_b: bool = False, **overrides) -> Path:
    """Write a deepseek2 GGUF with random weights (llama.cpp's tensor names and keys).

    split_kv_b=True writes ik/mainline's split ``attn_k_b``/``attn_v_b`` instead of ``attn_kv_b``.
    """
    s = _resolve(DEEPSEEK2_SHAPES, shape, overrides)
    dk = s.nope + s.rope
    bad = [v for v in (s.dim, s.kv_lora, s.nope, s.rope, s.v_dim, s.ffn, s.ffn_exp, s.q_lora) if v % 32]
    if bad or not 0 <= s.dense_layers <= s.layers or not 0 < s.experts_used <= s.experts \
            or s.gating not in ("softmax", "sigmoid"):
        raise EngineError(f"make-model: inconsistent deepseek2 shape {asdict(s)} (dims must be multiples of 32)")
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    name = shape if isinstance(shape, str) else "custom"
    w = _start_writer(tmp, "deepseek2", f"numasweep-{name}-{wtype}-seed{seed}", s.layers, s.ctx_train, s.dim,
                      s.heads, s.vocab, wtype)
    w.add_head_count_kv(s.heads)
    w.add_feed_forward_length(s.ffn)
    w.add_rope_freq_base(s.rope_base)
    w.add_expert_used_count(s.experts_used)
    w.add_leading_dense_block_count(s.dense_layers)
    if s.q_lora:
        w.add_q_lora_rank(s.q_lora)
    w.add_kv_lora_rank(s.kv_lora)
    w.add_key_length(dk)
    w.add_value_length(s.v_dim)
    w.add_expert_feed_forward_length(s.ffn_exp)
    w.add_expert_count(s.experts)
    w.add_expert_shared_count(s.shared)
    w.add_expert_weights_scale(s.weights_scale)
    w.add_expert_weights_norm(True)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID if s.gating == "sigmoid" else ExpertGatingFuncType.SOFTMAX)
    w.add_rope_dimension_count(s.rope)
    if s.yarn_factor > 1:
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(s.yarn_factor)
        w.add_rope_scaling_orig_ctx_len(s.yarn_orig_ctx)
        w.add_rope_scaling_yarn_log_mul(0.1)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    H = s.heads
    _matrix(w, rng, "token_embd.weight", s.vocab, s.dim, wtype, 1.0)
    for i in range(s.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(s.dim))
        if s.q_lora:
            _matrix(w, rng, p + "attn_q_a.weight", s.q_lora, s.dim, wtype, s.dim ** -0.5)
            w.add_tensor(p + "attn_q_a_norm.weight", norm(s.q_lora))
            _matrix(w, rng, p + "attn_q_b.weight", H * dk, s.q_lora, wtype, s.q_lora ** -0.5)
        else:
            _matrix(w, rng, p + "attn_q.weight", H * dk, s.dim, wtype, s.dim ** -0.5)
        _matrix(w, rng, p + "attn_kv_a_mqa.weight", s.kv_lora + s.rope, s.dim, wtype, s.dim ** -0.5)
        w.add_tensor(p + "attn_kv_a_norm.weight", norm(s.kv_lora))
        if split_kv_b:
            # ggml [nope, kv_lora, H] -> numpy (H, kv_lora, nope); [kv_lora, v, H] -> (H, v, kv_lora)
            _experts(w, rng, p + "attn_k_b.weight", H, s.kv_lora, s.nope, wtype, s.kv_lora ** -0.5)
            _experts(w, rng, p + "attn_v_b.weight", H, s.v_dim, s.kv_lora, wtype, s.kv_lora ** -0.5)
        else:
            _matrix(w, rng, p + "attn_kv_b.weight", H * (s.nope + s.v_dim), s.kv_lora, wtype, s.kv_lora ** -0.5)
        _matrix(w, rng, p + "attn_output.weight", s.dim, H * s.v_dim, wtype, (H * s.v_dim) ** -0.5)
        w.add_tensor(p + "ffn_norm.weight", norm(s.dim))
        if i < s.dense_layers:
            _matrix(w, rng, p + "ffn_gate.weight", s.ffn, s.dim, wtype, s.dim ** -0.5)
            _matrix(w, rng, p + "ffn_up.weight", s.ffn, s.dim, wtype, s.dim ** -0.5)
            _matrix(w, rng, p + "ffn_down.weight", s.dim, s.ffn, wtype, s.ffn ** -0.5)
            continue
        _moe_ffn_tensors(w, rng, p, s.dim, s.experts, s.ffn_exp, wtype)
        if s.probs_bias:
            w.add_tensor(p + "exp_probs_b.bias", (0.05 * rng.standard_normal(s.experts)).astype(np.float32))
        if s.shared:
            fs = s.ffn_exp * s.shared
            _matrix(w, rng, p + "ffn_gate_shexp.weight", fs, s.dim, wtype, s.dim ** -0.5)
            _matrix(w, rng, p + "ffn_up_shexp.weight", fs, s.dim, wtype, s.dim ** -0.5)
            _matrix(w, rng, p + "ffn_down_shexp.weight", s.dim, fs, wtype, fs ** -0.5)
    w.add_tensor("output_norm.weight", norm(s.dim))
    if not tied_output:
        _matrix(w, rng, "output.weight", s.vocab, s.dim, wtype, s.dim ** -0.5)
    return _finish_writer(w, tmp, path)


def make_gemma3_model(path: str | os.PathLike, shape: str | Gemma3Shape = "gemma3-tiny", *, seed: int = 0,
                      wtype: str = "q8_0", **overrides) -> Path:
    """Write a gemma3 GGUF with random weights (llama.cpp's tensor names and keys; tied output).

    Norm weights are stored as (1 + w) like the converter writes them; post-norm weights are
    kept small-ish so the residual stream stays O(1) through the layers.
    """
    s = _resolve(GEMMA3_SHAPES, shape, overrides)
    if any(v % 32 for v in (s.dim, s.head_dim, s.ffn)) or s.heads % s.kv_heads or s.sliding_window <= 0 \
            or s.swa_pattern <= 0:
        raise EngineError(f"make-model: inconsistent gemma3 shape {asdict(s)} (dims must be multiples of 32)")
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    name = shape if isinstance(shape, str) else "custom"
    w = _start_writer(tmp, "gemma3", f"numasweep-{name}-{wtype}-seed{seed}", s.layers, s.ctx_train, s.dim,
                      s.heads, s.vocab, wtype)
    w.add_head_count_kv(s.kv_heads)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_feed_forward_length(s.ffn)
    w.add_rope_freq_base(s.rope_base)
    w.add_sliding_window(s.sliding_window)
    if s.swa_pattern != 6:
        w.add_uint32("gemma3.attention.sliding_window_pattern", s.swa_pattern)
    if s.rope_base_swa != 10000.0:
        w.add_float32("gemma3.rope.freq_base_swa", s.rope_base_swa)

    def norm(n, spread=0.1):
        return (1.0 + spread * rng.standard_normal(n)).astype(np.float32)

    E, H, Hkv, D = s.dim, s.heads, s.kv_heads, s.head_dim
    _matrix(w, rng, "token_embd.weight", s.vocab, E, wtype, E ** -0.5)   # x sqrt(dim) at the input
    for i in range(s.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(E))
        _matrix(w, rng, p + "attn_q.weight", H * D, E, wtype, E ** -0.5)
        _matrix(w, rng, p + "attn_k.weight", Hkv * D, E, wtype, E ** -0.5)
        _matrix(w, rng, p + "attn_v.weight", Hkv * D, E, wtype, E ** -0.5)
        w.add_tensor(p + "attn_q_norm.weight", norm(D))
        w.add_tensor(p + "attn_k_norm.weight", norm(D))
        _matrix(w, rng, p + "attn_output.weight", E, H * D, wtype, (H * D) ** -0.5)
        w.add_tensor(p + "post_attention_norm.weight", norm(E, 0.05) * 0.5)
        w.add_tensor(p + "ffn_norm.weight", norm(E))
        _matrix(w, rng, p + "ffn_gate.weight", s.ffn, E, wtype, E ** -0.5)
        _matrix(w, rng, p + "ffn_up.weight", s.ffn, E, wtype, E ** -0.5)
        _matrix(w, rng, p + "ffn_down.weight", E, s.ffn, wtype, s.ffn ** -0.5)
        w.add_tensor(p + "post_ffw_norm.weight", norm(E, 0.05) * 0.5)
    w.add_tensor("output_norm.weight", norm(E))
    return _finish_writer(w, tmp, path)
