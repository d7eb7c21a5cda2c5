"""Weights as the kernels see them, and their products with activations.

``Weight`` is one 2-D matrix of kind
  "q8_0"     (n_out, n_in/32*34) u8   the GGUF tensor bytes (mmap'd) or re-quantized ones
  "q8_0_r8"  (n_out/8, n_in/32*272) u8  -rtr's interleaved rows (engine.q8_0_r8)
  "f32"      (n_out, n_in) f32       F32/F16/BF16 tensors, converted at load
``Experts`` is a 3-D stack of such matrices (MoE experts, MLA's per-head matrices):
Q8_0 (n_expert, n_out, n_in/32*34) u8 or f32 (n_expert, n_out, n_in).

``matmul(w, x, xq)`` is Y = X W^T for activations x (n, n_in) f32; the quantized
kinds use x's Q8_0 rows ``xq``, quantized here when the caller has none (every
layer quantizes a normed activation once and shares it, as ggml does).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.matmul import gemm_f32, gemm_q8_0, gemm_q8_0_multi
from engine.q8_0_r8 import gemm_q8_0_r8, gemm_q8_0_r8_multi
from engine.quant import dequantize_q8_0, quantize_q8_0


@dataclass(frozen=True)
class Weight:
    """One weight matrix (see the module docstring for the layouts of each kind)."""

    kind: str          # "q8_0" | "q8_0_r8" | "f32"
    data: np.ndarray
    n_out: int
    n_in: int
    source_type: str   # GGML type name in the file

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def n_params(self) -> int:
        return self.n_out * self.n_in

    @property
    def quantized(self) -> bool:
        """Whether products read Q8_0 activations (Q8_0 and Q8_0_R8 weights)."""
        return self.kind != "f32"


@dataclass(frozen=True)
class Experts:
    """One 3-D tensor: Q8_0 bytes (n_expert, n_out, n_in/32*34) u8 or f32 (n_expert, n_out, n_in)."""

    kind: str          # "q8_0" | "f32"
    data: np.ndarray
    n_expert: int
    n_out: int
    n_in: int
    source_type: str

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def bytes_per_expert(self) -> int:
        return int(self.data.nbytes) // self.n_expert

    @property
    def n_params(self) -> int:
        return self.n_expert * self.n_out * self.n_in

    @property
    def quantized(self) -> bool:
        return self.kind != "f32"

    def expert(self, e: int) -> Weight:
        return Weight(self.kind, self.data[e], self.n_out, self.n_in, self.source_type)


def matmul(w: Weight, x: np.ndarray | None, xq: np.ndarray | None = None) -> np.ndarray:
    """X W^T -> (n, n_out) f32; x (n, n_in) f32, xq its Q8_0 rows (n, n_in/32*34) u8 or None.

    An f32 weight needs x; a quantized one uses xq (x may then be None) or quantizes x.
    """
    if w.kind == "f32":
        return gemm_f32(w.data, x)
    if xq is None:
        xq = quantize_q8_0(x)
    if w.kind == "q8_0":
        return gemm_q8_0(w.data, xq)
    return gemm_q8_0_r8(w.data, xq)


def matmuls(ws: tuple[Weight, ...], x: np.ndarray, xq: np.ndarray | None = None) -> list[np.ndarray]:
    """Several matrices applied to the same input (q/k/v, gate/up); all-Q8_0 or all-R8 ones
    share one kernel launch (same sums as separate products)."""
    if all(w.kind == "q8_0" for w in ws) or all(w.kind == "q8_0_r8" for w in ws):
        if xq is None:
            xq = quantize_q8_0(x)
        if ws[0].kind == "q8_0":
            return gemm_q8_0_multi([w.data for w in ws], xq)
        return gemm_q8_0_r8_multi([w.data for w in ws], xq)
    return [matmul(w, x, xq) for w in ws]


def embed(w: Weight, tokens: np.ndarray) -> np.ndarray:
    """The embedding rows of token ids (n,) -> (n, n_in) f32, a new array."""
    if w.kind == "q8_0":
        return dequantize_q8_0(np.ascontiguousarray(w.data[tokens]))
    return np.ascontiguousarray(w.data[tokens], dtype=np.float32)
