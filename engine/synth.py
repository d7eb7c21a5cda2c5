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
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType

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
        raise EngineError(f"--shape: unknown shape {shape!r} (allowed: {', '.join(SHAPES)})")
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
    """Write a llama/qwen2 GGUF with random weights for a named shape; return its path."""
    if wtype not in WTYPES:
        raise EngineError(f"--wtype: unknown weight type {wtype!r} (allowed: {', '.join(WTYPES)})")
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
