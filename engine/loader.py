"""The weight loader: GGUF tensors -> the model's Weights (one tree for every architecture).

``TensorLoader`` reads tensors by their gguf-py names with shape checks: Q8_0 matrices
are used in place (the mmap'd bytes); F32/F16/BF16 become f32; any other quant type is
dequantized with ``gguf.quants.dequantize`` and re-quantized to Q8_0 at load ("run-time
repack"), which the load log reports. Each failure is one ``GGUFError`` line naming
the file and the tensor.

``load_weights`` builds ``Weights``: token_embd, then per block ``Layer(attn_norm, attn,
ffn_norm, ffn)`` with the blocks the config asks for (engine.archs), output_norm and the
output head (token_embd when the file has none: tied).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants
from gguf.constants import MODEL_TENSOR as T

from engine.archs import ModelConfig
from engine.block_ffn import GatedFFN, MoEFFN
from engine.block_gqa import GQAAttention
from engine.block_mla import MLAAttention
from engine.errors import GGUFError
from engine.gguf_file import GGUFFile
from engine.layout import QK8_0
from engine.metadata import tensor_name
from engine.quant import quantize_q8_0
from engine.tensors import Experts, Weight

FLOAT_TENSOR_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}


class TensorLoader:
    """Named, shape-checked tensors of one open GGUF file (see the module docstring)."""

    def __init__(self, gf: GGUFFile):
        self.gf, self.path = gf, gf.path
        self.tensors = {t.name: t for t in gf.tensors}
        self.repacked: dict[str, int] = {}      # GGML type name -> tensors re-quantized to Q8_0

    def has(self, name: str) -> bool:
        return name in self.tensors

    def need(self, name: str):
        t = self.tensors.get(name)
        if t is None:
            raise GGUFError(f"{self.path}: missing tensor {name}")
        return t

    def _dense(self, t) -> np.ndarray:
        """(rows, ne0) f32 of any supported tensor type."""
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
            raise GGUFError(f"{self.path}: tensor {t.name} has unsupported type {ttype.name}") from None

    def _q8_0(self, t, dense: np.ndarray, n_in: int) -> np.ndarray:
        ttype = GGMLQuantizationType(t.tensor_type)
        if n_in % QK8_0:
            raise GGUFError(f"{self.path}: tensor {t.name} row length {n_in} is not a multiple of {QK8_0} for Q8_0")
        self.repacked[ttype.name] = self.repacked.get(ttype.name, 0) + 1
        return quantize_q8_0(dense)

    def _check_type(self, t) -> GGMLQuantizationType:
        ttype = GGMLQuantizationType(t.tensor_type)
        if ttype not in GGML_QUANT_SIZES:
            raise GGUFError(f"{self.path}: tensor {t.name} has unsupported type {ttype.name}")
        return ttype

    def vector(self, name: str, n: int) -> np.ndarray:
        """(n,) f32: a norm weight or a bias."""
        t = self.need(name)
        v = self._dense(t).reshape(-1)
        if v.shape[0] != n:
            raise GGUFError(f"{self.path}: tensor {t.name} has {v.shape[0]} values, expected {n}")
        return np.ascontiguousarray(v)

    def optional_vector(self, name: str, n: int) -> np.ndarray | None:
        return self.vector(name, n) if name in self.tensors else None

    def matrix(self, name: str, n_out: int, n_in: int) -> Weight:
        """ggml [n_in, n_out] -> Weight (n_out, n_in): Q8_0 in place, floats as f32, else re-quantized."""
        t = self.need(name)
        shape = [int(d) for d in t.shape]
        if shape != [n_in, n_out]:
            raise GGUFError(f"{self.path}: tensor {t.name} has shape {shape}, expected [{n_in}, {n_out}]")
        ttype = GGMLQuantizationType(t.tensor_type)
        if ttype == GGMLQuantizationType.Q8_0:
            return Weight("q8_0", np.asarray(t.data).reshape(n_out, -1), n_out, n_in, ttype.name)
        self._check_type(t)
        dense = self._dense(t)
        if ttype in FLOAT_TENSOR_TYPES:
            return Weight("f32", np.ascontiguousarray(dense), n_out, n_in, ttype.name)
        return Weight("q8_0", self._q8_0(t, dense, n_in), n_out, n_in, ttype.name)

    def experts(self, name: str, n_expert: int, n_out: int, n_in: int) -> Experts:
        """ggml [n_in, n_out, n_expert] -> Experts (n_expert, n_out, n_in)."""
        t = self.need(name)
        want = [n_in, n_out, n_expert]
        if [int(d) for d in t.shape] != want:
            raise GGUFError(f"{self.path}: tensor {t.name} has shape {[int(d) for d in t.shape]}, expected {want}")
        ttype = GGMLQuantizationType(t.tensor_type)
        if ttype == GGMLQuantizationType.Q8_0:
            return Experts("q8_0", np.asarray(t.data).reshape(n_expert, n_out, -1), n_expert, n_out, n_in,
                           ttype.name)
        self._check_type(t)
        dense = self._dense(t)                       # (n_expert*n_out, n_in)
        if ttype in FLOAT_TENSOR_TYPES:
            return Experts("f32", np.ascontiguousarray(dense).reshape(n_expert, n_out, n_in),
                           n_expert, n_out, n_in, ttype.name)
        return Experts("q8_0", self._q8_0(t, dense, n_in).reshape(n_expert, n_out, -1), n_expert, n_out, n_in,
                       ttype.name)


@dataclass(frozen=True)
class Layer:
    """One transformer block: x += attn(norm(x)); x += ffn(norm(x))."""

    attn_norm: np.ndarray              # (n_embd,) f32
    attn: GQAAttention | MLAAttention
    ffn_norm: np.ndarray               # (n_embd,) f32
    ffn: GatedFFN | MoEFFN


@dataclass(frozen=True)
class Weights:
    token_embd: Weight                 # (n_vocab, n_embd)
    layers: tuple[Layer, ...]
    output_norm: np.ndarray            # (n_embd,) f32
    output: Weight                     # (n_vocab, n_embd); token_embd itself when tied
    tied_output: bool
    repacked: dict = field(default_factory=dict)   # GGML type name -> count converted to Q8_0

    @property
    def n_params(self) -> int:
        n = self.token_embd.n_params + (0 if self.tied_output else self.output.n_params)
        return n + sum(L.attn.n_params + L.ffn.n_params + 2 * L.attn_norm.shape[0] for L in self.layers)

    def bytes_per_token(self, mla_absorbed: bool) -> int:
        """Weight bytes one TG token reads: every block's matrices (a MoE block's router, shared
        expert and used experts; MLA's TG-mode matrices) and the output head."""
        return self.output.nbytes + sum(L.attn.bytes_per_token(mla_absorbed) + L.ffn.bytes_per_token
                                        for L in self.layers)

    def source_types(self) -> str:
        kinds: set[str] = set()
        for L in self.layers:
            kinds |= L.attn.source_types() | L.ffn.source_types()
        return "+".join(sorted(kinds))


def load_weights(gf: GGUFFile, cfg: ModelConfig, log: Callable[[str], None] | None = None) -> Weights:
    """Every tensor the config's blocks need, shape-checked (see the module docstring)."""
    t0 = time.perf_counter()
    ld = TensorLoader(gf)
    E = cfg.n_embd
    emb_t = ld.need(tensor_name(T.TOKEN_EMBD))
    n_vocab = int(emb_t.shape[1]) if len(emb_t.shape) == 2 else 0
    if cfg.n_vocab and n_vocab != cfg.n_vocab:
        raise GGUFError(f"{gf.path}: token_embd.weight has {n_vocab} rows, vocabulary has {cfg.n_vocab}")
    token_embd = ld.matrix(tensor_name(T.TOKEN_EMBD), n_vocab, E)
    layers = []
    for i in range(cfg.n_layer):
        attn = MLAAttention.load(ld, cfg, i) if cfg.uses_mla else GQAAttention.load(ld, cfg, i)
        ffn = MoEFFN.load(ld, cfg, i) if cfg.moe_layer(i) else GatedFFN.load(ld, cfg, i)
        layers.append(Layer(ld.vector(tensor_name(T.ATTN_NORM, i), E), attn,
                            ld.vector(tensor_name(T.FFN_NORM, i), E), ffn))
    tied = not ld.has(tensor_name(T.OUTPUT))
    output = token_embd if tied else ld.matrix(tensor_name(T.OUTPUT), n_vocab, E)
    if ld.repacked and log:
        kinds = ", ".join(f"{n} x {k}" for k, n in sorted(ld.repacked.items()))
        log(f"run-time repack: converted {kinds} tensors to Q8_0 at load "
            f"({sum(ld.repacked.values())} tensors, {time.perf_counter() - t0:.1f} s)")
    return Weights(token_embd=token_embd, layers=tuple(layers), output_norm=ld.vector(tensor_name(T.OUTPUT_NORM), E),
                   output=output, tied_output=tied, repacked=dict(ld.repacked))
