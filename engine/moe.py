"""Mixture-of-experts FFN: routing and the expert kernels (qwen2moe, mixtral, deepseek2).

Routing follows llama.cpp's ``build_moe_ffn``:

  logits = ffn_gate_inp . h                                   (n, n_expert)
  probs  = softmax(logits) | sigmoid(logits)                  (gating function)
  select = probs + exp_probs_b (deepseek-V3's bias, selection only)
  ids    = top-k(select), k = expert_used_count               (n, k)
  w      = probs[ids]; w /= sum(w) if expert_weights_norm; w *= expert_weights_scale
  out    = sum_j w[:, j] * down_e(silu(gate_e . h) * (up_e . h)),  e = ids[:, j]

Expert tensors are 3-D in GGUF (``blk.N.ffn_{gate,up,down}_exps.weight``, ggml
shape [n_in, n_out, n_expert]); in numpy a Q8_0 one is (n_expert, n_out,
n_in/32*34) bytes, so expert e's matrix is the contiguous slice [e] and every
matmul reuses the Q8_0 tiles of ``_simd``.

Two execution modes (``-fmoe``):

* unfused (default): ggml's op-by-op graph: per selected expert, a gate GEMM, an
  up GEMM (``matmul.gemm_q8_0`` on the expert's slice, over the tokens routed
  to it), then SwiGLU over all slots, one quantization, a down GEMM per expert,
  and the weighted sum. 3 x (active experts) kernel launches per layer.
* fused (``-fmoe``, ik_llama.cpp's fused_moe): one parallel kernel computes gate
  and up for every (selected expert, 4-row tile) work item and applies
  silu(gate)*up in the same pass (no separate gate/up/SwiGLU buffers walked
  again), then one parallel kernel does every expert's down projection. Two
  kernel launches per layer, work balanced across all selected experts.

Both give the same numbers up to float summation order. f32 experts (f16/f32
files) always take the unfused path (the fused kernels are Q8_0 only).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from numba import njit, prange

from engine import _numba
from engine._numba import NJIT, PARALLEL
from engine._simd import q8_tile_1x1, q8_tile_4x1, q8_tile_4x2
from engine.errors import GGUFError
from engine.gguf_model import _FLOAT_TYPES, Weight, _matrix, _to_f32_matrix, _vector
from engine.matmul import dot_q8_0_scalar, gemm_f32, gemm_q8_0
from engine.ops import swiglu
from engine.quant import quantize_q8_0

GATING = {1: "softmax", 2: "sigmoid"}   # llama.cpp LLAMA_EXPERT_GATING_FUNC_TYPE_*


@dataclass(frozen=True)
class MoEConfig:
    """Routing hyper-parameters (``{arch}.expert_*`` keys)."""

    n_expert: int
    n_expert_used: int
    n_ff_exp: int            # rows of one expert's gate/up
    n_ff_shexp: int          # rows of the shared expert's gate/up (0 = none)
    gating: str              # "softmax" | "sigmoid"
    norm_weights: bool       # renormalise the k selected weights to sum 1
    weights_scale: float     # multiply the weights by this (1.0 = no-op)
    shexp_gated: bool        # qwen2moe: shared expert scaled by sigmoid(ffn_gate_inp_shexp . h)

    def validate(self, path: str) -> "MoEConfig":
        if self.n_expert <= 0 or not 0 < self.n_expert_used <= self.n_expert:
            raise GGUFError(f"{path}: bad expert counts: {self.n_expert_used} used of {self.n_expert}")
        if self.n_ff_exp <= 0:
            raise GGUFError(f"{path}: missing or bad expert_feed_forward_length ({self.n_ff_exp})")
        if self.gating not in ("softmax", "sigmoid"):
            raise GGUFError(f"{path}: unsupported expert gating function {self.gating!r}")
        return self


@dataclass(frozen=True)
class Experts:
    """One 3-D expert tensor: Q8_0 bytes (n_expert, n_out, n_in/32*34) u8 or f32 (n_expert, n_out, n_in)."""

    kind: str
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

    def expert(self, e: int) -> Weight:
        return Weight(self.kind, self.data[e], self.n_out, self.n_in, self.source_type)


@dataclass(frozen=True)
class MoEWeights:
    gate_inp: Weight                  # (n_expert, n_embd) router
    probs_bias: np.ndarray | None     # (n_expert,) f32 exp_probs_b (selection only)
    gate: Experts                     # (n_expert, n_ff_exp, n_embd)
    up: Experts                       # (n_expert, n_ff_exp, n_embd)
    down: Experts                     # (n_expert, n_embd, n_ff_exp)
    sh_gate: Weight | None            # (n_ff_shexp, n_embd) shared expert
    sh_up: Weight | None
    sh_down: Weight | None            # (n_embd, n_ff_shexp)
    sh_gate_inp: np.ndarray | None    # (n_embd,) f32 qwen2moe shared-expert gate

    def bytes_per_token(self, n_used: int) -> int:
        """Weight bytes one token reads: router + shared expert + n_used routed experts."""
        n = self.gate_inp.nbytes + n_used * sum(x.bytes_per_expert for x in (self.gate, self.up, self.down))
        n += sum(w.nbytes for w in (self.sh_gate, self.sh_up, self.sh_down) if w is not None)
        return n

    @property
    def n_params(self) -> int:
        n = self.gate_inp.n_out * self.gate_inp.n_in
        n += sum(x.n_expert * x.n_out * x.n_in for x in (self.gate, self.up, self.down))
        n += sum(w.n_out * w.n_in for w in (self.sh_gate, self.sh_up, self.sh_down) if w is not None)
        return n


def _experts(t, path: str, n_expert: int, n_out: int, n_in: int, repacked: dict) -> Experts:
    want = [n_in, n_out, n_expert]
    if [int(d) for d in t.shape] != want:
        raise GGUFError(f"{path}: tensor {t.name} has shape {list(map(int, t.shape))}, expected {want}")
    ttype = GGMLQuantizationType(t.tensor_type)
    if ttype == GGMLQuantizationType.Q8_0:
        return Experts("q8_0", np.asarray(t.data).reshape(n_expert, n_out, -1), n_expert, n_out, n_in, ttype.name)
    if ttype not in GGML_QUANT_SIZES:
        raise GGUFError(f"{path}: tensor {t.name} has unsupported type {ttype.name}")
    dense = _to_f32_matrix(t, path)                       # (n_expert*n_out, n_in)
    if ttype in _FLOAT_TYPES:
        return Experts("f32", np.ascontiguousarray(dense).reshape(n_expert, n_out, n_in),
                       n_expert, n_out, n_in, ttype.name)
    if n_in % 32:
        raise GGUFError(f"{path}: tensor {t.name} row length {n_in} is not a multiple of 32 for Q8_0")
    repacked[ttype.name] = repacked.get(ttype.name, 0) + 1
    return Experts("q8_0", quantize_q8_0(dense).reshape(n_expert, n_out, -1), n_expert, n_out, n_in, ttype.name)


def load_moe_weights(tensors: dict, prefix: str, cfg: MoEConfig, n_embd: int, path: str,
                     repacked: dict) -> MoEWeights:
    """The MoE tensors of one block (prefix ``blk.N.``), names as llama.cpp writes them."""
    def need(name):
        t = tensors.get(prefix + name)
        if t is None:
            raise GGUFError(f"{path}: missing tensor {prefix + name}")
        return t

    def mat(name, n_out, n_in):
        return _matrix(need(name), path, n_out, n_in, repacked, keep_float=True)

    E, X, F = n_embd, cfg.n_expert, cfg.n_ff_exp
    bias = tensors.get(prefix + "exp_probs_b.bias")
    sh = cfg.n_ff_shexp > 0 and (prefix + "ffn_up_shexp.weight") in tensors
    shg = tensors.get(prefix + "ffn_gate_inp_shexp.weight") if cfg.shexp_gated else None
    return MoEWeights(
        gate_inp=mat("ffn_gate_inp.weight", X, E),
        probs_bias=_vector(bias, path, X) if bias is not None else None,
        gate=_experts(need("ffn_gate_exps.weight"), path, X, F, E, repacked),
        up=_experts(need("ffn_up_exps.weight"), path, X, F, E, repacked),
        down=_experts(need("ffn_down_exps.weight"), path, X, E, F, repacked),
        sh_gate=mat("ffn_gate_shexp.weight", cfg.n_ff_shexp, E) if sh else None,
        sh_up=mat("ffn_up_shexp.weight", cfg.n_ff_shexp, E) if sh else None,
        sh_down=mat("ffn_down_shexp.weight", E, cfg.n_ff_shexp) if sh else None,
        sh_gate_inp=_vector(shg, path, E) if shg is not None else None,
    )


# -- routing ---------------------------------------------------------------------------

def route(logits: np.ndarray, cfg: MoEConfig, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k experts per token: ids (n, k) int64 and weights (n, k) f32 (see module docstring)."""
    z = logits.astype(np.float32)
    if cfg.gating == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    else:
        probs = 1.0 / (1.0 + np.exp(-z))
    sel = probs + bias if bias is not None else probs
    k = cfg.n_expert_used
    ids = np.argsort(-sel, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(probs, ids, axis=1)
    if cfg.norm_weights:
        w = w / np.maximum(w.sum(axis=1, keepdims=True), np.float32(6.103515625e-5))
    if cfg.weights_scale != 1.0:
        w = w * np.float32(cfg.weights_scale)
    return ids.astype(np.int64), w.astype(np.float32)


# -- kernels -----------------------------------------------------------------------------

@njit(**NJIT)
def _tile_avx2(out, oo, ocs, w, wo, wrs, x, xo, xcs, nb, nr, nc):
    # out[oo + c*ocs + r] = W row r . X row c for r < nr (<= 4), c < nc (<= 2)
    if nr == 4:
        if nc == 2:
            q8_tile_4x2(out, oo, ocs, w, wo, wrs, x, xo, xcs, nb)
        else:
            q8_tile_4x1(out, oo, ocs, w, wo, wrs, x, xo, xcs, nb)
    else:
        for r in range(nr):
            for c in range(nc):
                q8_tile_1x1(out, oo + c * ocs + r, 0, w, wo + r * wrs, 0, x, xo + c * xcs, 0, nb)


@njit(**NJIT)
def _tile_scalar(out, oo, ocs, w, wo, wrs, x, xo, xcs, nb, nr, nc):
    for r in range(nr):
        for c in range(nc):
            out[oo + c * ocs + r] = dot_q8_0_scalar(w, wo + r * wrs, x, xo + c * xcs, nb)


# Each kernel exists per SIMD path (a function argument would defeat numba's cache);
# the two copies differ only in the tile they call.
@njit(**PARALLEL)
def _moe_up_gate_avx2(xg, wg, wu, rb, n_ff, ex, offs, g, u):
    # xg: flat (n_slots*rb) u8 Q8_0 rows, slots grouped by expert; wg, wu: flat
    # (n_expert*n_ff*rb) u8; ex: (n_act,) expert ids; offs: (n_act+1,) slot ranges.
    # g, u: flat (n_slots*n_ff) f32; on return g[s, r] = silu(gate) * up.
    nb = rb // 34
    n_tiles = (n_ff + 3) // 4
    for item in prange(ex.shape[0] * n_tiles):
        a = item // n_tiles
        r0 = (item - a * n_tiles) * 4
        nr = min(4, n_ff - r0)
        wo = (ex[a] * n_ff + r0) * rb
        s = offs[a]
        while s < offs[a + 1]:
            nc = min(2, offs[a + 1] - s)
            _tile_avx2(g, s * n_ff + r0, n_ff, wg, wo, rb, xg, s * rb, rb, nb, nr, nc)
            _tile_avx2(u, s * n_ff + r0, n_ff, wu, wo, rb, xg, s * rb, rb, nb, nr, nc)
            for c in range(nc):
                for r in range(nr):
                    i = (s + c) * n_ff + r0 + r
                    v = g[i]
                    g[i] = v / (np.float32(1.0) + np.exp(-v)) * u[i]
            s += nc


@njit(**PARALLEL)
def _moe_down_avx2(aq, wd, rb, n_embd, ex, offs, out):
    # aq: flat (n_slots*rb) u8 Q8_0 activations; wd: flat (n_expert*n_embd*rb) u8;
    # out: flat (n_slots*n_embd) f32
    nb = rb // 34
    n_tiles = (n_embd + 3) // 4
    for item in prange(ex.shape[0] * n_tiles):
        a = item // n_tiles
        r0 = (item - a * n_tiles) * 4
        nr = min(4, n_embd - r0)
        wo = (ex[a] * n_embd + r0) * rb
        s = offs[a]
        while s < offs[a + 1]:
            nc = min(2, offs[a + 1] - s)
            _tile_avx2(out, s * n_embd + r0, n_embd, wd, wo, rb, aq, s * rb, rb, nb, nr, nc)
            s += nc


@njit(**PARALLEL)
def _moe_up_gate_scalar(xg, wg, wu, rb, n_ff, ex, offs, g, u):
    nb = rb // 34
    n_tiles = (n_ff + 3) // 4
    for item in prange(ex.shape[0] * n_tiles):
        a = item // n_tiles
        r0 = (item - a * n_tiles) * 4
        nr = min(4, n_ff - r0)
        wo = (ex[a] * n_ff + r0) * rb
        s = offs[a]
        while s < offs[a + 1]:
            nc = min(2, offs[a + 1] - s)
            _tile_scalar(g, s * n_ff + r0, n_ff, wg, wo, rb, xg, s * rb, rb, nb, nr, nc)
            _tile_scalar(u, s * n_ff + r0, n_ff, wu, wo, rb, xg, s * rb, rb, nb, nr, nc)
            for c in range(nc):
                for r in range(nr):
                    i = (s + c) * n_ff + r0 + r
                    v = g[i]
                    g[i] = v / (np.float32(1.0) + np.exp(-v)) * u[i]
            s += nc


@njit(**PARALLEL)
def _moe_down_scalar(aq, wd, rb, n_embd, ex, offs, out):
    nb = rb // 34
    n_tiles = (n_embd + 3) // 4
    for item in prange(ex.shape[0] * n_tiles):
        a = item // n_tiles
        r0 = (item - a * n_tiles) * 4
        nr = min(4, n_embd - r0)
        wo = (ex[a] * n_embd + r0) * rb
        s = offs[a]
        while s < offs[a + 1]:
            nc = min(2, offs[a + 1] - s)
            _tile_scalar(out, s * n_embd + r0, n_embd, wd, wo, rb, aq, s * rb, rb, nb, nr, nc)
            s += nc


def _mm(w: Weight, x: np.ndarray, xq: np.ndarray | None) -> np.ndarray:
    if w.kind == "q8_0":
        return gemm_q8_0(w.data, xq if xq is not None else quantize_q8_0(x))
    return gemm_f32(w.data, x)


def _slots(ids: np.ndarray):
    """Group the n*k (token, choice) pairs by expert: slot order, experts, offsets."""
    flat = ids.reshape(-1)
    order = np.argsort(flat, kind="stable")          # slot -> flat (token*k + j)
    ex, counts = np.unique(flat[order], return_counts=True)
    offs = np.zeros(ex.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=offs[1:])
    return order, ex.astype(np.int64), offs


def moe_ffn(h: np.ndarray, W: MoEWeights, cfg: MoEConfig, *, fused: bool,
            simd: str | None = None) -> np.ndarray:
    """The routed + shared expert FFN of h (n, n_embd) f32 (normed input) -> (n, n_embd) f32."""
    n, E = h.shape
    k = cfg.n_expert_used
    hq = quantize_q8_0(h)
    logits = _mm(W.gate_inp, h, hq if W.gate_inp.kind == "q8_0" else None)
    ids, wts = route(logits, cfg, W.probs_bias)
    order, ex, offs = _slots(ids)
    tok = order // k                                  # slot -> token
    F = cfg.n_ff_exp
    q8 = W.gate.kind == W.up.kind == W.down.kind == "q8_0"
    if fused and q8:
        avx2 = (simd or _numba.SIMD) == "avx2"
        up_gate = _moe_up_gate_avx2 if avx2 else _moe_up_gate_scalar
        down = _moe_down_avx2 if avx2 else _moe_down_scalar
        xg = np.ascontiguousarray(hq[tok])
        g = np.empty((order.shape[0], F), dtype=np.float32)
        u = np.empty_like(g)
        up_gate(xg.reshape(-1), W.gate.data.reshape(-1), W.up.data.reshape(-1), hq.shape[1],
                     F, ex, offs, g.reshape(-1), u.reshape(-1))
        aq = quantize_q8_0(g)
        d = np.empty((order.shape[0], E), dtype=np.float32)
        down(aq.reshape(-1), W.down.data.reshape(-1), aq.shape[1], E, ex, offs, d.reshape(-1))
    else:
        xs = np.ascontiguousarray(hq[tok]) if q8 else np.ascontiguousarray(h[tok])
        g = np.empty((order.shape[0], F), dtype=np.float32)
        u = np.empty_like(g)
        for a, e in enumerate(ex):
            s0, s1 = offs[a], offs[a + 1]
            x = xs[s0:s1]
            g[s0:s1] = _mm(W.gate.expert(e), x, x) if q8 else _mm(W.gate.expert(e), x, None)
            u[s0:s1] = _mm(W.up.expert(e), x, x) if q8 else _mm(W.up.expert(e), x, None)
        s = swiglu(g, u)
        sq = quantize_q8_0(s) if W.down.kind == "q8_0" else None
        d = np.empty((order.shape[0], E), dtype=np.float32)
        for a, e in enumerate(ex):
            s0, s1 = offs[a], offs[a + 1]
            d[s0:s1] = _mm(W.down.expert(e), s[s0:s1], None if sq is None else sq[s0:s1])
    inv = np.empty_like(order)
    inv[order] = np.arange(order.shape[0])
    out = np.einsum("nk,nke->ne", wts, d[inv].reshape(n, k, E), optimize=False).astype(np.float32)
    if W.sh_up is not None:
        sg = _mm(W.sh_gate, h, hq if W.sh_gate.kind == "q8_0" else None)
        su = _mm(W.sh_up, h, hq if W.sh_up.kind == "q8_0" else None)
        ss = swiglu(sg, su)
        sd = _mm(W.sh_down, ss, None)
        if W.sh_gate_inp is not None:
            sd *= (1.0 / (1.0 + np.exp(-(h @ W.sh_gate_inp)))).astype(np.float32)[:, None]
        out += sd
    return out


def grouped_gemm_q8_0(w3: np.ndarray, xq: np.ndarray, n_per_group: int, simd: str | None = None) -> np.ndarray:
    """Per-group GEMM in one parallel kernel: out[g*n + t] = W[g] . X[g*n + t].

    w3 (G, n_out, rb) u8 Q8_0 rows; xq (G*n, rb) u8 Q8_0 rows -> (G*n, n_out) f32. Used for
    MLA's per-head W_kb^T q and W_vb o products (a group = a head).
    """
    G, n_out, rb = w3.shape
    if xq.shape != (G * n_per_group, rb) or xq.dtype != np.uint8 or w3.dtype != np.uint8:
        raise ValueError(f"grouped_gemm_q8_0: W {w3.shape} and X {xq.shape} do not fit {n_per_group} rows/group")
    ex = np.arange(G, dtype=np.int64)
    offs = np.arange(G + 1, dtype=np.int64) * n_per_group
    out = np.empty((G * n_per_group, n_out), dtype=np.float32)
    kernel = _moe_down_avx2 if (simd or _numba.SIMD) == "avx2" else _moe_down_scalar
    kernel(np.ascontiguousarray(xq).reshape(-1), np.ascontiguousarray(w3).reshape(-1), rb, n_out, ex, offs,
           out.reshape(-1))
    return out
