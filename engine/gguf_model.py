"""GGUF -> ModelConfig + Weights, memory-mapped, with bounds checks.

The file is read with ``engine.gguf_file`` (mmap; ``gguf.GGUFReader`` takes ~30 s
on a 262144-token vocabulary); type ids and block sizes come from the gguf
package. Before any tensor is used we check: magic, that every tensor lies
inside the file and is aligned, that shapes match the hyper-parameters, and that
every required tensor is present. Each failure is one
``GGUFError`` line naming the file.

Weight handling: Q8_0 matrices are used in place (the mmap'd bytes); F32/F16/
BF16 become f32 matrices; any other quant type is dequantized with
``gguf.quants.dequantize`` and re-quantized to Q8_0 at load ("run-time repack"),
which the load log reports.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf import quants as gguf_quants

from engine.errors import GGUFError
from engine.gguf_file import GGUFFile
from engine.quant import quantize_q8_0

# MoE / MLA: engine.moe_model, engine.deepseek2; gemma3 (extra norms, sliding window): engine.gemma3
ARCHS = ("llama", "qwen2", "qwen2moe", "deepseek2", "gemma3")
_NEOX_ARCHS = {"qwen2", "qwen2moe", "gemma3"}
_FLOAT_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}


def _field_value(reader: GGUFFile, key: str):
    """Metadata value: arrays -> their length, strings -> str, scalars -> Python scalar; missing -> None."""
    f = reader.fields.get(key)
    if f is None:
        return None
    return len(f.value) if f.type == GGUFValueType.ARRAY else f.value


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a llama-family model, read from GGUF metadata."""

    arch: str
    name: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    rms_eps: float
    rope_freq_base: float
    n_rot: int
    rope_neox: bool
    rope_scaling: str          # none | linear | yarn
    rope_freq_scale: float     # 1/factor
    rope_n_ctx_orig: int
    n_ctx_train: int
    file_type: int | None

    @classmethod
    def from_gguf(cls, reader: GGUFFile, path: str = "") -> "ModelConfig":
        arch = _field_value(reader, "general.architecture")
        if arch is None:
            raise GGUFError(f"{path}: missing key general.architecture")
        if arch not in ARCHS:
            raise GGUFError(f"{path}: unsupported architecture {arch!r} (supported: {', '.join(ARCHS)})")

        def get(key, default=None, required=False):
            v = _field_value(reader, f"{arch}.{key}")
            if v is None:
                if required:
                    raise GGUFError(f"{path}: missing key {arch}.{key}")
                return default
            return v

        n_embd = int(get("embedding_length", required=True))
        n_head = int(get("attention.head_count", required=True))
        if n_head <= 0 or n_embd <= 0:
            raise GGUFError(f"{path}: bad head count {n_head} or embedding length {n_embd}")
        n_head_kv = int(get("attention.head_count_kv", n_head))
        head_dim = int(get("attention.key_length", n_embd // n_head))
        if n_head_kv <= 0 or n_head % n_head_kv:
            raise GGUFError(f"{path}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
        n_vocab = get("vocab_size")
        if n_vocab is None:
            n_vocab = _field_value(reader, "tokenizer.ggml.tokens")
        scaling = get("rope.scaling.type", "none")
        factor = float(get("rope.scaling.factor", 1.0) or 1.0)
        if scaling not in ("none", "linear", "yarn"):
            raise GGUFError(f"{path}: unsupported {arch}.rope.scaling.type {scaling!r}")
        cfg = cls(
            arch=arch,
            name=str(_field_value(reader, "general.name") or Path(path).stem),
            n_vocab=int(n_vocab or 0),
            n_embd=n_embd,
            n_layer=int(get("block_count", required=True)),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ff=int(get("feed_forward_length") or get("expert_feed_forward_length", required=True)),
            rms_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_freq_base=float(get("rope.freq_base", 10000.0)),
            n_rot=int(get("rope.dimension_count", head_dim)),
            rope_neox=arch in _NEOX_ARCHS,
            rope_scaling=scaling,
            rope_freq_scale=1.0 / factor if scaling != "none" else 1.0,
            rope_n_ctx_orig=int(get("rope.scaling.original_context_length", 0)
                                or get("context_length", 0) or 0),
            n_ctx_train=int(get("context_length", 0) or 0),
            file_type=_field_value(reader, "general.file_type"),
        )
        if cfg.n_layer <= 0 or cfg.n_ff <= 0 or cfg.n_rot > cfg.head_dim or cfg.n_rot % 2:
            raise GGUFError(f"{path}: inconsistent hyper-parameters (layers {cfg.n_layer}, ffn {cfg.n_ff}, "
                            f"rope dims {cfg.n_rot}, head dim {cfg.head_dim})")
        return cfg


@dataclass(frozen=True)
class Weight:
    """One weight matrix: Q8_0 bytes (n_out, n_in/32*34) u8, or f32 (n_out, n_in)."""

    kind: str          # "q8_0" | "f32"
    data: np.ndarray
    n_out: int
    n_in: int
    source_type: str   # GGML type name in the file

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: np.ndarray      # (n_embd,) f32
    wq: Weight
    wk: Weight
    wv: Weight
    wo: Weight
    bq: np.ndarray | None      # (n_head*head_dim,) f32 (qwen2)
    bk: np.ndarray | None
    bv: np.ndarray | None
    ffn_norm: np.ndarray
    w_gate: Weight
    w_up: Weight
    w_down: Weight


@dataclass(frozen=True)
class Weights:
    token_embd: Weight
    layers: tuple[LayerWeights, ...]
    output_norm: np.ndarray
    output: Weight
    tied_output: bool
    repacked: dict = field(default_factory=dict)   # GGML type name -> count converted to Q8_0

    @property
    def matmul_bytes_per_token(self) -> int:
        """Bytes of weight matrices one TG token reads (all layers + output head)."""
        total = self.output.nbytes
        for L in self.layers:
            total += sum(w.nbytes for w in (L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down))
        return total


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Open and bounds-check a GGUF file; every failure is a one-line GGUFError.

    GGUFFile.open already checks the magic, the header and that every tensor lies
    inside the file; here: alignment and empty dimensions.
    """
    reader = GGUFFile.open(path)
    path = reader.path
    for t in reader.tensors:
        if t.data_offset % reader.alignment:
            raise GGUFError(f"{path}: tensor {t.name} offset {t.data_offset} is not {reader.alignment}-byte aligned")
        if any(int(d) <= 0 for d in t.shape):
            raise GGUFError(f"{path}: tensor {t.name} has an empty dimension {list(t.shape)}")
    return reader


def _to_f32_matrix(t, path: str) -> np.ndarray:
    ttype = GGMLQuantizationType(t.tensor_type)
    n_in = int(t.shape[0])
    if ttype == GGMLQuantizationType.F32:
        return np.asarray(t.data, dtype=np.float32).reshape(-1, n_in)
    if ttype == GGMLQuantizationType.F16:
        return np.asarray(t.data).reshape(-1, n_in).astype(np.float32)
    if ttype == GGMLQuantizationType.BF16:
        u16 = np.asarray(t.data).reshape(-1).view(np.uint16).astype(np.uint32)
        return (u16 << 16).view(np.float32).reshape(-1, n_in)
    try:
        return gguf_quants.dequantize(np.asarray(t.data), ttype).astype(np.float32).reshape(-1, n_in)
    except NotImplementedError:
        raise GGUFError(f"{path}: tensor {t.name} has unsupported type {ttype.name}") from None


def _vector(t, path: str, n: int) -> np.ndarray:
    v = _to_f32_matrix(t, path).reshape(-1)
    if v.shape[0] != n:
        raise GGUFError(f"{path}: tensor {t.name} has {v.shape[0]} values, expected {n}")
    return np.ascontiguousarray(v)


def _matrix(t, path: str, n_out: int, n_in: int, repacked: dict, keep_float: bool) -> Weight:
    shape = (int(t.shape[0]), int(t.shape[1]) if len(t.shape) > 1 else 1)
    if len(t.shape) != 2 or shape != (n_in, n_out):
        raise GGUFError(f"{path}: tensor {t.name} has shape {list(map(int, t.shape))}, expected [{n_in}, {n_out}]")
    ttype = GGMLQuantizationType(t.tensor_type)
    if ttype == GGMLQuantizationType.Q8_0:
        return Weight("q8_0", np.asarray(t.data).reshape(n_out, -1), n_out, n_in, ttype.name)
    if ttype not in GGML_QUANT_SIZES:
        raise GGUFError(f"{path}: tensor {t.name} has unsupported type {ttype.name}")
    dense = _to_f32_matrix(t, path)
    if ttype in _FLOAT_TYPES and keep_float:
        return Weight("f32", np.ascontiguousarray(dense), n_out, n_in, ttype.name)
    if n_in % 32:
        raise GGUFError(f"{path}: tensor {t.name} row length {n_in} is not a multiple of 32 for Q8_0")
    repacked[ttype.name] = repacked.get(ttype.name, 0) + 1
    return Weight("q8_0", quantize_q8_0(dense), n_out, n_in, ttype.name)


def load_weights(reader: GGUFFile, cfg: ModelConfig, path: str,
                 log: Callable[[str], None] | None = None) -> Weights:
    t_start = time.perf_counter()
    tensors = {t.name: t for t in reader.tensors}
    repacked: dict[str, int] = {}

    def need(name: str):
        t = tensors.get(name)
        if t is None:
            raise GGUFError(f"{path}: missing tensor {name}")
        return t

    def mat(name, n_out, n_in):
        return _matrix(need(name), path, n_out, n_in, repacked, keep_float=True)

    E, H, Hkv, D, F = cfg.n_embd, cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_ff
    emb_t = need("token_embd.weight")
    n_vocab = int(emb_t.shape[1]) if len(emb_t.shape) == 2 else 0
    if cfg.n_vocab and n_vocab != cfg.n_vocab:
        raise GGUFError(f"{path}: token_embd.weight has {n_vocab} rows, vocabulary has {cfg.n_vocab}")
    token_embd = mat("token_embd.weight", n_vocab, E)
    layers = []
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        bias = {}
        for b, n in (("attn_q.bias", H * D), ("attn_k.bias", Hkv * D), ("attn_v.bias", Hkv * D)):
            bias[b] = _vector(tensors[p + b], path, n) if p + b in tensors else None
        layers.append(LayerWeights(
            attn_norm=_vector(need(p + "attn_norm.weight"), path, E),
            wq=mat(p + "attn_q.weight", H * D, E),
            wk=mat(p + "attn_k.weight", Hkv * D, E),
            wv=mat(p + "attn_v.weight", Hkv * D, E),
            wo=mat(p + "attn_output.weight", E, H * D),
            bq=bias["attn_q.bias"], bk=bias["attn_k.bias"], bv=bias["attn_v.bias"],
            ffn_norm=_vector(need(p + "ffn_norm.weight"), path, E),
            w_gate=mat(p + "ffn_gate.weight", F, E),
            w_up=mat(p + "ffn_up.weight", F, E),
            w_down=mat(p + "ffn_down.weight", E, F),
        ))
    tied = "output.weight" not in tensors
    output = token_embd if tied else mat("output.weight", n_vocab, E)
    if repacked and log:
        kinds = ", ".join(f"{n} x {k}" for k, n in sorted(repacked.items()))
        log(f"run-time repack: converted {kinds} tensors to Q8_0 at load "
            f"({sum(repacked.values())} tensors, {time.perf_counter() - t_start:.1f} s)")
    return Weights(token_embd=token_embd, layers=tuple(layers),
                   output_norm=_vector(need("output_norm.weight"), path, E),
                   output=output, tied_output=tied, repacked=repacked)
