"""Synthetic GGUF models: real format, random weights, deterministic from a seed.

Benchmarks need real shapes, not trained weights. Weights are generated directly
as Q8_0 blocks (random int8 quants in [-127, 127], fp16 scales chosen so each
weight has std ~ 1/sqrt(n_in), which keeps activations O(1) through the layers).
A minimal llama-style tokenizer section makes the file loadable by other tools.
The shapes (and their consistency checks) are ``engine.shapes``; tensor names come
from gguf-py's tables (``engine.metadata.tensor_name``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import (ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter, LlamaFileType, RopeScalingType,
                  TokenType)
from gguf.constants import MODEL_TENSOR as T

from engine.errors import EngineError
from engine.metadata import tensor_name
from engine.shapes import (ALL_SHAPES, DEEPSEEK2_SHAPES, GEMMA3_SHAPES, MOE_SHAPES, SHAPES, WTYPES,  # noqa: F401
                           DeepSeek2Shape, Gemma3Shape, MoEShape, Shape, resolve_shape)

_QUANT_STD = float(np.sqrt(np.mean(np.arange(-127, 128, dtype=np.float64) ** 2)))
_FILE_TYPES = {"q8_0": LlamaFileType.MOSTLY_Q8_0, "f16": LlamaFileType.MOSTLY_F16, "f32": LlamaFileType.ALL_F32}


def _name(kind, bid: int | None = None, suffix: str = "weight") -> str:
    return tensor_name(kind, bid, suffix)


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


def _experts(writer: GGUFWriter, rng, name: str, n_expert: int, n_out: int, n_in: int, wtype: str,
             std: float) -> None:
    # numpy (n_expert, n_out, row) -> ggml [n_in, n_out, n_expert]
    if wtype == "q8_0":
        blocks = _q8_0_blocks(rng, n_expert * n_out, n_in, std).reshape(n_expert, n_out, -1)
        writer.add_tensor(name, blocks, raw_dtype=GGMLQuantizationType.Q8_0)
    else:
        a = rng.standard_normal((n_expert, n_out, n_in), dtype=np.float32) * std
        writer.add_tensor(name, a.astype(np.float16 if wtype == "f16" else np.float32))


def _start_writer(path: Path, arch: str, name: str, layers: int, ctx: int, dim: int, heads: int,
                  vocab: int, wtype: str, eps: float) -> tuple[GGUFWriter, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    w = GGUFWriter(str(tmp), arch)
    w.add_name(name)
    w.add_block_count(layers)
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_head_count(heads)
    w.add_layer_norm_rms_eps(eps)
    w.add_vocab_size(vocab)
    w.add_file_type(_FILE_TYPES[wtype])
    specials = ["<unk>", "<s>", "</s>"]
    tokens = (specials + [f"<0x{i:02X}>" for i in range(256)] + [f"tok{i}" for i in range(vocab)])[:vocab]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([TokenType.CONTROL if t in specials else TokenType.NORMAL for t in tokens])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    return w, tmp


def _finish_writer(w: GGUFWriter, tmp: Path, path: Path) -> Path:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)  # never leave a half-written model under the final name
    return path


def _norms(rng):
    def norm(n, spread=0.1):
        return (1.0 + spread * rng.standard_normal(n)).astype(np.float32)
    return norm


def make_model(path: str | os.PathLike, shape: str | Shape = "tiny", *, seed: int = 0, wtype: str = "q8_0",
               tied_output: bool = False, **overrides) -> Path:
    """Write a GGUF with random weights for a named shape (any family); return its path.

    Dense shapes (engine.shapes.SHAPES: llama / qwen2 / qwen3) are written here; MoE,
    DeepSeek-2 and Gemma 3 shapes go to make_moe_model / make_deepseek2_model /
    make_gemma3_model.
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
    hd, E = s.hd, s.dim
    w, tmp = _start_writer(path, s.arch, f"numasweep-{name}-{wtype}-seed{seed}", s.layers, s.ctx_train, E,
                           s.heads, s.vocab, wtype, 1e-5)
    w.add_feed_forward_length(s.ffn)
    w.add_head_count_kv(s.kv_heads)
    if s.head_dim:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(s.rope_base)
    norm = _norms(rng)
    _matrix(w, rng, _name(T.TOKEN_EMBD), s.vocab, E, wtype, 1.0)
    for i in range(s.layers):
        w.add_tensor(_name(T.ATTN_NORM, i), norm(E))
        _matrix(w, rng, _name(T.ATTN_Q, i), s.heads * hd, E, wtype, E ** -0.5)
        _matrix(w, rng, _name(T.ATTN_K, i), s.kv_heads * hd, E, wtype, E ** -0.5)
        _matrix(w, rng, _name(T.ATTN_V, i), s.kv_heads * hd, E, wtype, E ** -0.5)
        if s.arch == "qwen2":
            for kind, n in ((T.ATTN_Q, s.heads * hd), (T.ATTN_K, s.kv_heads * hd), (T.ATTN_V, s.kv_heads * hd)):
                w.add_tensor(_name(kind, i, "bias"), (0.1 * rng.standard_normal(n)).astype(np.float32))
        if s.arch == "qwen3":
            w.add_tensor(_name(T.ATTN_Q_NORM, i), norm(hd))
            w.add_tensor(_name(T.ATTN_K_NORM, i), norm(hd))
        _matrix(w, rng, _name(T.ATTN_OUT, i), E, s.heads * hd, wtype, (s.heads * hd) ** -0.5)
        w.add_tensor(_name(T.FFN_NORM, i), norm(E))
        _matrix(w, rng, _name(T.FFN_GATE, i), s.ffn, E, wtype, E ** -0.5)
        _matrix(w, rng, _name(T.FFN_UP, i), s.ffn, E, wtype, E ** -0.5)
        _matrix(w, rng, _name(T.FFN_DOWN, i), E, s.ffn, wtype, s.ffn ** -0.5)
    w.add_tensor(_name(T.OUTPUT_NORM), norm(E))
    if not tied_output:
        _matrix(w, rng, _name(T.OUTPUT), s.vocab, E, wtype, E ** -0.5)
    return _finish_writer(w, tmp, path)


def _moe_ffn_tensors(w, rng, i: int, dim: int, experts: int, ffn_exp: int, wtype: str) -> None:
    # router in f32 like llama.cpp's converters keep small 2-D tensors; logits of O(1) spread
    w.add_tensor(_name(T.FFN_GATE_INP, i), (rng.standard_normal((experts, dim)) * 2 * dim ** -0.5)
                 .astype(np.float32))
    _experts(w, rng, _name(T.FFN_GATE_EXP, i), experts, ffn_exp, dim, wtype, dim ** -0.5)
    _experts(w, rng, _name(T.FFN_UP_EXP, i), experts, ffn_exp, dim, wtype, dim ** -0.5)
    _experts(w, rng, _name(T.FFN_DOWN_EXP, i), experts, dim, ffn_exp, wtype, ffn_exp ** -0.5)


def _gqa_tensors(w, rng, i: int, E: int, H: int, Hkv: int, hd: int, wtype: str, biases: bool, norm) -> None:
    w.add_tensor(_name(T.ATTN_NORM, i), norm(E))
    _matrix(w, rng, _name(T.ATTN_Q, i), H * hd, E, wtype, E ** -0.5)
    _matrix(w, rng, _name(T.ATTN_K, i), Hkv * hd, E, wtype, E ** -0.5)
    _matrix(w, rng, _name(T.ATTN_V, i), Hkv * hd, E, wtype, E ** -0.5)
    if biases:
        for kind, n in ((T.ATTN_Q, H * hd), (T.ATTN_K, Hkv * hd), (T.ATTN_V, Hkv * hd)):
            w.add_tensor(_name(kind, i, "bias"), (0.1 * rng.standard_normal(n)).astype(np.float32))
    _matrix(w, rng, _name(T.ATTN_OUT, i), E, H * hd, wtype, (H * hd) ** -0.5)


def make_moe_model(path: str | os.PathLike, shape: str | MoEShape = "moe-tiny", *, seed: int = 0,
                   wtype: str = "q8_0", tied_output: bool = False, **overrides) -> Path:
    """Write a qwen2moe (or, arch="llama", mixtral-style) GGUF with random weights."""
    s = resolve_shape(shape, **overrides)
    hd = s.dim // s.heads
    rng = np.random.default_rng(seed)
    path = Path(path)
    name = shape if isinstance(shape, str) else "custom"
    w, tmp = _start_writer(path, s.arch, f"numasweep-{name}-{wtype}-seed{seed}", s.layers, s.ctx_train, s.dim,
                           s.heads, s.vocab, wtype, 1e-6)
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
    norm = _norms(rng)
    _matrix(w, rng, _name(T.TOKEN_EMBD), s.vocab, s.dim, wtype, 1.0)
    for i in range(s.layers):
        _gqa_tensors(w, rng, i, s.dim, s.heads, s.kv_heads, hd, wtype, s.arch == "qwen2moe", norm)
        w.add_tensor(_name(T.FFN_NORM, i), norm(s.dim))
        _moe_ffn_tensors(w, rng, i, s.dim, s.experts, s.ffn_exp, wtype)
        if shared:
            w.add_tensor(_name(T.FFN_GATE_INP_SHEXP, i), (rng.standard_normal(s.dim) * s.dim ** -0.5)
                         .astype(np.float32))
            _matrix(w, rng, _name(T.FFN_GATE_SHEXP, i), s.ffn_shexp, s.dim, wtype, s.dim ** -0.5)
            _matrix(w, rng, _name(T.FFN_UP_SHEXP, i), s.ffn_shexp, s.dim, wtype, s.dim ** -0.5)
            _matrix(w, rng, _name(T.FFN_DOWN_SHEXP, i), s.dim, s.ffn_shexp, wtype, s.ffn_shexp ** -0.5)
    w.add_tensor(_name(T.OUTPUT_NORM), norm(s.dim))
    if not tied_output:
        _matrix(w, rng, _name(T.OUTPUT), s.vocab, s.dim, wtype, s.dim ** -0.5)
    return _finish_writer(w, tmp, path)


def make_deepseek2_model(path: str | os.PathLike, shape: str | DeepSeek2Shape = "deepseek2-tiny", *,
                         seed: int = 0, wtype: str = "q8_0", tied_output: bool = False,
                         split_kv_b: bool = False, **overrides) -> Path:
    """Write a deepseek2 GGUF with random weights (llama.cpp's tensor names and keys).

    split_kv_b=True writes ik/mainline's split ``attn_k_b``/``attn_v_b`` instead of ``attn_kv_b``.
    """
    s = resolve_shape(shape, **overrides)
    dk = s.nope + s.rope
    rng = np.random.default_rng(seed)
    path = Path(path)
    name = shape if isinstance(shape, str) else "custom"
    w, tmp = _start_writer(path, "deepseek2", f"numasweep-{name}-{wtype}-seed{seed}", s.layers, s.ctx_train,
                           s.dim, s.heads, s.vocab, wtype, 1e-6)
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
    norm = _norms(rng)
    H = s.heads
    _matrix(w, rng, _name(T.TOKEN_EMBD), s.vocab, s.dim, wtype, 1.0)
    for i in range(s.layers):
        w.add_tensor(_name(T.ATTN_NORM, i), norm(s.dim))
        if s.q_lora:
            _matrix(w, rng, _name(T.ATTN_Q_A, i), s.q_lora, s.dim, wtype, s.dim ** -0.5)
            w.add_tensor(_name(T.ATTN_Q_A_NORM, i), norm(s.q_lora))
            _matrix(w, rng, _name(T.ATTN_Q_B, i), H * dk, s.q_lora, wtype, s.q_lora ** -0.5)
        else:
            _matrix(w, rng, _name(T.ATTN_Q, i), H * dk, s.dim, wtype, s.dim ** -0.5)
        _matrix(w, rng, _name(T.ATTN_KV_A_MQA, i), s.kv_lora + s.rope, s.dim, wtype, s.dim ** -0.5)
        w.add_tensor(_name(T.ATTN_KV_A_NORM, i), norm(s.kv_lora))
        if split_kv_b:
            # ggml [nope, kv_lora, H] -> numpy (H, kv_lora, nope); [kv_lora, v, H] -> (H, v, kv_lora)
            _experts(w, rng, _name(T.ATTN_K_B, i), H, s.kv_lora, s.nope, wtype, s.kv_lora ** -0.5)
            _experts(w, rng, _name(T.ATTN_V_B, i), H, s.v_dim, s.kv_lora, wtype, s.kv_lora ** -0.5)
        else:
            _matrix(w, rng, _name(T.ATTN_KV_B, i), H * (s.nope + s.v_dim), s.kv_lora, wtype, s.kv_lora ** -0.5)
        _matrix(w, rng, _name(T.ATTN_OUT, i), s.dim, H * s.v_dim, wtype, (H * s.v_dim) ** -0.5)
        w.add_tensor(_name(T.FFN_NORM, i), norm(s.dim))
        if i < s.dense_layers:
            _matrix(w, rng, _name(T.FFN_GATE, i), s.ffn, s.dim, wtype, s.dim ** -0.5)
            _matrix(w, rng, _name(T.FFN_UP, i), s.ffn, s.dim, wtype, s.dim ** -0.5)
            _matrix(w, rng, _name(T.FFN_DOWN, i), s.dim, s.ffn, wtype, s.ffn ** -0.5)
            continue
        _moe_ffn_tensors(w, rng, i, s.dim, s.experts, s.ffn_exp, wtype)
        if s.probs_bias:
            w.add_tensor(_name(T.FFN_EXP_PROBS_B, i, "bias"),
                         (0.05 * rng.standard_normal(s.experts)).astype(np.float32))
        if s.shared:
            fs = s.ffn_exp * s.shared
            _matrix(w, rng, _name(T.FFN_GATE_SHEXP, i), fs, s.dim, wtype, s.dim ** -0.5)
            _matrix(w, rng, _name(T.FFN_UP_SHEXP, i), fs, s.dim, wtype, s.dim ** -0.5)
            _matrix(w, rng, _name(T.FFN_DOWN_SHEXP, i), s.dim, fs, wtype, fs ** -0.5)
    w.add_tensor(_name(T.OUTPUT_NORM), norm(s.dim))
    if not tied_output:
        _matrix(w, rng, _name(T.OUTPUT), s.vocab, s.dim, wtype, s.dim ** -0.5)
    return _finish_writer(w, tmp, path)


def make_gemma3_model(path: str | os.PathLike, shape: str | Gemma3Shape = "gemma3-tiny", *, seed: int = 0,
                      wtype: str = "q8_0", **overrides) -> Path:
    """Write a gemma3 GGUF with random weights (llama.cpp's tensor names and keys; tied output).

    Norm weights are stored as (1 + w) like the converter writes them; post-norm weights are
    kept small-ish so the residual stream stays O(1) through the layers.
    """
    s = resolve_shape(shape, **overrides)
    rng = np.random.default_rng(seed)
    path = Path(path)
    name = shape if isinstance(shape, str) else "custom"
    w, tmp = _start_writer(path, "gemma3", f"numasweep-{name}-{wtype}-seed{seed}", s.layers, s.ctx_train, s.dim,
                           s.heads, s.vocab, wtype, 1e-6)
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
    norm = _norms(rng)
    E, H, Hkv, D = s.dim, s.heads, s.kv_heads, s.head_dim
    _matrix(w, rng, _name(T.TOKEN_EMBD), s.vocab, E, wtype, E ** -0.5)   # x sqrt(dim) at the input
    for i in range(s.layers):
        w.add_tensor(_name(T.ATTN_NORM, i), norm(E))
        _matrix(w, rng, _name(T.ATTN_Q, i), H * D, E, wtype, E ** -0.5)
        _matrix(w, rng, _name(T.ATTN_K, i), Hkv * D, E, wtype, E ** -0.5)
        _matrix(w, rng, _name(T.ATTN_V, i), Hkv * D, E, wtype, E ** -0.5)
        w.add_tensor(_name(T.ATTN_Q_NORM, i), norm(D))
        w.add_tensor(_name(T.ATTN_K_NORM, i), norm(D))
        _matrix(w, rng, _name(T.ATTN_OUT, i), E, H * D, wtype, (H * D) ** -0.5)
        w.add_tensor(_name(T.ATTN_POST_NORM, i), norm(E, 0.05) * 0.5)
        w.add_tensor(_name(T.FFN_NORM, i), norm(E))
        _matrix(w, rng, _name(T.FFN_GATE, i), s.ffn, E, wtype, E ** -0.5)
        _matrix(w, rng, _name(T.FFN_UP, i), s.ffn, E, wtype, E ** -0.5)
        _matrix(w, rng, _name(T.FFN_DOWN, i), E, s.ffn, wtype, s.ffn ** -0.5)
        w.add_tensor(_name(T.FFN_POST_NORM, i), norm(E, 0.05) * 0.5)
    w.add_tensor(_name(T.OUTPUT_NORM), norm(E))
    return _finish_writer(w, tmp, path)
